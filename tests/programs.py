"""Debian programs some tests need (Prometheus, Chromium, VictoriaMetrics), installed if missing.

Like the local stack: on a fresh Debian CI machine running as root the Debian package
is installed with apt-get; elsewhere a missing program skips the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APT_LOG = ROOT / ".local" / "apt.log"


def ensure_program(binary: str, package: str) -> str:
    """Path of ``binary``; apt-get installs ``package`` first when it is missing."""
    found = shutil.which(binary) or (binary if Path(binary).exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"{binary} missing and not root: apt-get install {package} to run this")
    APT_LOG.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with APT_LOG.open("ab") as log:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
            if subprocess.run(cmd, stdout=log, stderr=log, env=env, timeout=900).returncode:
                pytest.fail(f"apt-get install {package} failed, see {APT_LOG}")
    found = shutil.which(binary) or (binary if Path(binary).exists() else None)
    if not found:
        pytest.fail(f"{package} installed but {binary} not found")
    return found
