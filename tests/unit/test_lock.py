"""requirements.lock pins every dependency pyproject.toml asks for, within its bounds.

``make lock`` refreshes it; this test fails when pyproject.toml changed without that."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", text, flags=re.M)
    return {canonicalize_name(name): version for name, version in found}


def test_every_dependency_is_pinned_within_its_specifier() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(line for group in extras.values() for line in group)]
    locked = pins()
    problems = []
    for line in wanted:
        req = Requirement(line)
        if canonicalize_name(req.name) == "collector":  # dev = collector[tracing] + tools
            continue
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside {req.specifier}")
    assert not problems, f"{problems}: run `make lock`"


def test_every_pin_has_hashes_and_the_installs_use_them() -> None:
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.strip())
    assert all("--hash=sha256:" in block for block in blocks)
    bootstrap = (ROOT / "deploy" / "local" / "bootstrap.sh").read_text()
    assert "--require-hashes -r requirements.lock" in bootstrap
    assert "requirements.lock" in (ROOT / "Makefile").read_text().split("lock:")[0]


def test_pre_commit_runs_the_venvs_ruff_and_mypy() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert hooks["ruff"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["mypy"]["entry"] == ".venv/bin/mypy"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
