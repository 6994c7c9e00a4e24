"""The web view (``GET /``) and the JSON summary it is fed from (``GET /api/v1/summary``).

The page is one static HTML file with vanilla JS (no build step), served by every
worker.  It may be opened without a token; it passes ``?token=`` from its own URL on to
the API, which checks the bearer token like every other API endpoint.
"""

from __future__ import annotations

from importlib import resources

from faust import web

from collector.agents.runtime import Runtime
from collector.observability.summary import build_summary
from collector.web.ops import readiness, runtime_of

blueprint = web.Blueprint("view")


def page_html() -> str:
    """The page from package data (read per request: it is small and never stale)."""
    return resources.files("collector.web").joinpath("static/index.html").read_text("utf-8")


def summary(rt: Runtime) -> dict[str, object]:
    ready, body = readiness(rt)
    now = rt.totals()
    return build_summary(
        rt.metrics, now=now, history=rt.history, sink_health=rt.sinks.health(),
        lag=rt.lag.partitions, ready={"ready": ready, "reasons": body["reasons"]},
    ) | {"worker": {"app": rt.settings.app.id,
                   "url": str(rt.app.conf.canonical_url),
                   # the page charts these sources' windows only: MySQL may hold others'
                   "sources": list(rt.settings.kafka.sources)}}


@blueprint.route("/", name="index")
class IndexView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.html(page_html())


@blueprint.route("/api/v1/summary", name="summary")
class SummaryView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json(summary(runtime_of(self)))
