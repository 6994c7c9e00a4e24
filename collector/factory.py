"""The app factory: settings in, a worker's Faust app with everything registered out.

Nothing in collector builds an app on import.  ``faust -A collector`` reaches
:func:`default_app` through ``collector.app`` (a lazy module attribute), which loads
the settings from the environment once (a bad value exits 2 before anything connects).
"""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, GCCollector

from collector.adapters.app import CollectorApp, new_app
from collector.adapters.tables import create_tables
from collector.config import Settings, load_settings_or_exit

_default: CollectorApp | None = None


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> CollectorApp:
    """A configured, not yet started, worker app: tables, runtime, agents, views."""
    from collector import web
    from collector.agents import raw, users, windows
    from collector.agents.runtime import Runtime

    app = new_app(settings)
    runtime = Runtime(app, settings, create_tables(app, settings), registry)
    app.runtime = runtime
    app.add_dependency(runtime)
    raw.register(app, runtime)
    windows.register(app, runtime)
    users.register(app, runtime)
    web.register(app, runtime)
    return app


def default_app() -> CollectorApp:
    """The process's app from the environment's settings, built on first use."""
    global _default
    if _default is None:
        settings = load_settings_or_exit()
        tune_gc(settings.app.gc_thresholds)
        _default = create_app(settings)
        # python_gc_*: collections per generation and what they found (process-wide)
        GCCollector(registry=_default.runtime.registry)
    return _default


def tune_gc(thresholds: str) -> None:
    """Set the process's garbage-collector thresholds (``app.gc_thresholds``: empty keeps
    Python's).  Process-wide, so only the worker's own app does it, not
    :func:`create_app` (tests build many apps in one process)."""
    if thresholds:
        gen0, gen1, gen2 = (int(part) for part in thresholds.split(","))
        gc.set_threshold(gen0, gen1, gen2)
