"""The app factory: settings in, a worker's Faust app with everything registered out.

Nothing in collector builds an app on import.  ``faust -A collector`` reaches
:func:`default_app` through ``collector.app`` (a lazy module attribute), which loads
the settings from the environment once (a bad value exits 2 before anything connects).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

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
        _default = create_app(load_settings_or_exit())
    return _default
