"""The web view (``GET /``) and the JSON summary it is fed from (``GET /api/v1/summary``).

The page is one static HTML file with vanilla JS (no build step), served by every
worker.  It may be opened without a token; it passes ``?token=`` from its own URL on to
the API, which checks the bearer token like every other API endpoint.

The summary also lists the aggregates declared in configuration (``aggregates``): the
page cannot know them otherwise (they differ per deployment), and it needs each one's
kind (a session one is asked per user), keys and measures to lay out its card before
any window exists.
"""

from __future__ import annotations

from importlib import resources

from faust import web

from collector.agents.runtime import Runtime
from collector.engine.specs import Specs
from collector.observability.summary import build_summary
from collector.web.ops import readiness, runtime_of

blueprint = web.Blueprint("view")


def page_html() -> str:
    """The page from package data (read per request: it is small and never stale)."""
    return resources.files("collector.web").joinpath("static/index.html").read_text("utf-8")


def configured(specs: Specs) -> list[dict[str, object]]:
    """Each configured aggregate's name, window kind and length (a session's: its gap),
    key names, measure (row value) names and query path, in declaration-name order."""
    return [{"name": d.name, "window": d.window,
             "window_seconds": specs.for_table(d.name).seconds,
             "keys": list(d.key_names), "measures": list(d.outputs), "path": d.route}
            for d in specs.aggregates if d.configured]


def summary(rt: Runtime) -> dict[str, object]:
    ready, body = readiness(rt)
    now = rt.totals()
    return build_summary(
        rt.metrics, now=now, history=rt.history, sink_health=rt.sinks.health(),
        lag=rt.lag.partitions, ready={"ready": ready, "reasons": body["reasons"]},
    ) | {"worker": {"app": rt.settings.app.id,
                   "url": str(rt.app.conf.canonical_url),
                   # the page charts these sources' windows only: MySQL may hold others'
                   "sources": list(rt.settings.kafka.sources)},
            "aggregates": configured(rt.specs)}


@blueprint.route("/", name="index")
class IndexView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.html(page_html())


@blueprint.route("/api/v1/summary", name="summary")
class SummaryView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json(summary(runtime_of(self)))
