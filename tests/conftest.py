"""Session fixtures shared by all test suites.

Only tests that ask for ``stack`` need services; unit tests never trigger it.  The stack is
left running at the end on purpose (the next run reuses it in well under a second); ``make
down`` or ``python deploy/local/stack.py down`` stops it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.py"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings of this run (defaults plus COLLECTOR_* env), loaded once."""
    return load_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Bring the local stack up, or reuse it, and return the settings pointing at it.

    A subprocess keeps the daemons out of pytest's process tree and output capture; it
    inherits the environment, so COLLECTOR_* overrides apply to both sides.
    """
    cmd = [sys.executable, str(STACK_SCRIPT), "up"]
    # Generous: a CI machine may first have to apt-get install the daemons.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode:
        pytest.fail(f"local stack did not come up:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def migrated(stack: Settings) -> Settings:
    """The stack with every migration applied (idempotent)."""
    import asyncio

    from collector.db import migrate

    asyncio.run(migrate(stack))
    return stack
