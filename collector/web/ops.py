"""Operational endpoints: Prometheus metrics and health probes.

Read-only GETs.  Metrics come from the registry the runtime created its metrics against,
so nothing here touches prometheus_client's global registry.
"""

from __future__ import annotations

import time
from typing import Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import app, settings
from collector.observability import health
from collector.observability.health import Thresholds
from collector.streams.runtime import runtime

blueprint = web.Blueprint("ops")


@blueprint.route("/metrics", name="metrics")
class MetricsView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        body = generate_latest(runtime.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


@blueprint.route("/livez", name="livez")
class LiveView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json({"live": True})


def readiness() -> tuple[bool, dict[str, Any]]:
    """Ready once recovered, with commits progressing and no sink failing for too long."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    web_settings = settings.web
    thresholds = Thresholds(stall_s=web_settings.ready_stall_seconds,
                            sink_failing_s=web_settings.ready_sink_failing_seconds)
    return health.readiness(
        recovered=recovery.completed.is_set() and not app.in_recovery,
        rebalancing=bool(app.rebalancing),
        stalled=runtime.lag.stalled(thresholds.stall_s),
        sink_health=runtime.sinks.health(),
        now=time.time(),
        thresholds=thresholds,
    )


@blueprint.route("/readyz", name="readyz")
class ReadyView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        ok, body = readiness()
        return self.json(body, status=200 if ok else 503)


blueprint.register(app, url_prefix="")
