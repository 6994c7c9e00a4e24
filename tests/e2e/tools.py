"""External programs for end-to-end tests (Prometheus, Chromium), installed if missing.

Like the local stack: on a fresh Debian CI machine running as root the Debian package
is installed with apt-get; elsewhere a missing program skips the test with the reason.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def get(url: str, timeout: float = 5.0, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_http(url: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            get(url, timeout=2.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def keep_artifact(path: Path, name: str | None = None) -> Path:
    """Copy ``path`` into ``test-artifacts/`` (gitignored) so CI can upload it."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / (name or path.name)
    shutil.copyfile(path, target)
    return target
