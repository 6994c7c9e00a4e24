"""Every autodiscovered module imports, and the worker refuses to run without one."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import collector
from collector.app import AUTODISCOVER


def _modules() -> list[str]:
    names = []
    for package in AUTODISCOVER:
        pkg = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name: str) -> None:
    assert importlib.import_module(name) is not None


def test_agents_and_tables_are_registered() -> None:
    for name in _modules():
        importlib.import_module(name)
    agents = set(collector.app.agents)
    assert {"collector.raw", "collector.users", "collector.merge"} <= agents
    assert {"collector-state", "collector-merged"} <= set(collector.app.tables)


def test_transport_module_imports() -> None:
    module = importlib.import_module("collector.transport.handoff")
    assert collector.app.transport.Consumer is module.LeanHandoffConsumer


def test_autodiscovery_errors_are_fatal() -> None:
    with pytest.raises(RuntimeError, match="refusing to start"):
        try:
            raise ImportError("boom")
        except ImportError:
            collector.app._on_autodiscovery_error("collector.broken")
