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


def test_the_workers_app_sets_the_gc_thresholds_and_importing_does_not() -> None:
    """``app.gc_thresholds`` reaches the worker's process (Python's 700,10,10 cost the
    worker 17-26% of its CPU in full collections); an import, or an app built by
    ``create_app`` (tests build many), leaves the process's thresholds alone."""
    code = ("import gc, collector, collector.factory as f\n"
            "before = gc.get_threshold()\n"
            "f.create_app(f.load_settings_or_exit())\n"
            "assert gc.get_threshold() == before, 'create_app changed them'\n"
            "names = {m.name for m in collector.app.runtime.registry.collect()}\n"
            "assert 'python_gc_collections' in names, names\n"
            "print(before, gc.get_threshold())\n")

    def run(value: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_APP__GC_THRESHOLDS"}
        if value is not None:
            env["COLLECTOR_APP__GC_THRESHOLDS"] = value
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    assert run(None) == "(700, 10, 10) (10000, 50, 1000)"  # the default
    assert run("5000, 20, 100") == "(700, 10, 10) (5000, 20, 100)"
    assert run("") == "(700, 10, 10) (700, 10, 10)"  # empty: Python's own
    env = {**os.environ, "COLLECTOR_APP__GC_THRESHOLDS": "0,10,10"}  # would turn it off
    proc = subprocess.run([sys.executable, "-c", "import collector; collector.app"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "app.gc_thresholds" in proc.stderr, proc.stderr[-2000:]


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
