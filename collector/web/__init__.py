"""Views on Faust's web server: HTTP ingest, queries, probes, metrics, the web view."""

from __future__ import annotations

import faust

from collector.agents.runtime import Runtime


def register(app: faust.App, runtime: Runtime) -> None:
    """Mount every blueprint, and start the services the views use with the app."""
    from collector.web import auth, ingest, ops, query, view
    from collector.web.history import History

    runtime.sink_history = History(runtime.settings.mysql)
    runtime.ingest_producer = ingest.IngestProducer(runtime.settings)
    app.add_dependency(runtime.sink_history)
    app.add_dependency(runtime.ingest_producer)
    app.web_middlewares.append(auth.middleware(runtime.settings.web))  # type: ignore[attr-defined]
    for module in (ingest, ops, query, view):
        module.blueprint.register(app, url_prefix="")
