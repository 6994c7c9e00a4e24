"""Importing collector has no side effects; the factory registers every agent and view;
the package's import graph follows the layout in docs/architecture.md."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import faust
import pytest

import collector
from collector.config import load_settings
from collector.factory import create_app

ROOT = Path(collector.__file__).resolve().parent


def _modules() -> list[str]:
    return ["collector"] + [m.name for m in pkgutil.walk_packages([str(ROOT)], "collector.")]


def test_every_module_imports_without_settings_or_an_app() -> None:
    """A bad environment must not break ``import collector.<anything>``: in a clean
    interpreter with an invalid setting, every module imports and no app exists."""
    code = ("import importlib, sys\n"
            f"for name in {_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "import collector.factory as f\n"
            "assert f._default is None, 'an import built the app'\n"
            "assert not [m for m in sys.modules if m.startswith('faust.cli')]\n"
            "print('ok')\n")
    env = {**os.environ, "COLLECTOR_KAFKA__PARTITIONS": "not-a-number"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_lazy_app_attribute_exits_2_on_a_bad_environment() -> None:
    env = {**os.environ, "COLLECTOR_KAFKA__PARTITIONS": "not-a-number"}
    proc = subprocess.run([sys.executable, "-c", "import collector; collector.app"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "kafka.partitions" in proc.stderr


def test_the_factory_registers_agents_tables_views_and_the_transport() -> None:
    app = create_app(load_settings())
    assert isinstance(app, faust.App) and app.runtime is not None
    assert {"collector.raw", "collector.users", "collector.merge"} <= set(app.agents)
    assert {"collector-state", "collector-merged"} <= set(app.tables)
    from collector.observability.summary import RateHistory
    from collector.web.history import History

    # the web views' services do not shadow the runtime's own
    assert isinstance(app.runtime.history, RateHistory)
    assert isinstance(app.runtime.sink_history, History)
    transport = importlib.import_module("collector.adapters.transport")
    assert app.transport.Consumer is transport.LeanHandoffConsumer
    # two apps from one process do not share state (tests build several)
    other = create_app(load_settings())
    assert other.runtime is not app.runtime and other.runtime.registry is not app.runtime.registry


@pytest.mark.parametrize("command", ["agents", "tables", "models"])
def test_faust_cli_commands_work(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "faust", "-A", "collector", command],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if command == "agents":
        assert "@raw" in proc.stdout and "collect.raw.mobile" in proc.stdout
    if command == "tables":
        assert "collector-state" in proc.stdout


#: package -> collector packages it may import (docs/architecture.md draws this)
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "drivers": {"config"},
    "models": {"config"},
    "engine": {"config", "models", "sinks", "aggregates", "observability", "enrichment"},
    "aggregates": {"config"},
    "sinks": {"config", "models", "aggregates", "observability", "drivers"},
    "enrichment": {"config", "models", "drivers"},
    "kafka": {"config"},
    "observability": {"config", "sinks"},
    "adapters": {"config", "engine", "observability", "sinks", "models", "kafka"},
    "agents": {"config", "models", "engine", "adapters", "enrichment", "observability",
               "sinks", "kafka", "db"},
    "web": {"config", "models", "engine", "agents", "observability", "sinks", "kafka",
            "adapters", "aggregates", "drivers"},
    "db": {"config", "enrichment", "aggregates", "models"},
    "devtools": {"config", "models", "kafka"},
    "ops": {"config", "kafka"},
    "cli": {"config", "db", "kafka", "devtools", "models", "enrichment", "adapters",
            "aggregates", "ops"},
}
#: modules that may import faust, mode or aiokafka's internals
FAUST_ALLOWED = {"adapters", "agents", "web"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package_of(path)
        if pkg not in ALLOWED:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "collector" and len(parts) > 1:
                target = parts[1]
                if target != pkg and target not in ALLOWED[pkg]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            if parts[0] in ("faust", "mode") and pkg not in FAUST_ALLOWED:
                wrong.append(f"{path.relative_to(ROOT)} imports {name} (Faust outside "
                             "adapters/agents/web)")
    assert not wrong, "\n".join(wrong)


def test_modules_stay_under_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, long
