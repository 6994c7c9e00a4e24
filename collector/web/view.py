"""The web view (``GET /``) and the JSON summary it is fed from (``GET /api/v1/summary``).

The page is one static HTML file with vanilla JS (no build step), served by every
worker.  It may be opened without a token; it passes ``?token=`` from its own URL on to
the API, which checks the bearer token like every other API endpoint.
"""

from __future__ import annotations

from importlib import resources

from faust import web

from collector import app, settings
from collector.observability.summary import build_summary
from collector.streams.runtime import runtime
from collector.web.ops import readiness

blueprint = web.Blueprint("view")


def page_html() -> str:
    """The page from package data (read per request: it is small and never stale)."""
    return resources.files("collector.web").joinpath("static/index.html").read_text("utf-8")


def summary() -> dict[str, object]:
    rt = runtime
    ready, body = readiness()
    now = rt.totals()
    return build_summary(
        rt.metrics, now=now, history=rt.history, sink_health=rt.sinks.health(),
        lag=rt.lag.partitions, ready={"ready": ready, "reasons": body["reasons"]},
    ) | {"worker": {"app": settings.app.id, "url": str(app.conf.canonical_url)}}


@blueprint.route("/", name="index")
class IndexView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.html(page_html())


@blueprint.route("/api/v1/summary", name="summary")
class SummaryView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json(summary())


blueprint.register(app, url_prefix="")
