"""Operational endpoints: Prometheus metrics and health probes.

Read-only GETs.  Metrics come from the registry the runtime created its metrics against,
so nothing here touches prometheus_client's global registry.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import app, settings
from collector.streams.runtime import runtime
from collector.web.ingest import bearer_ok

blueprint = web.Blueprint("ops")

SINK_FAILING_THRESHOLD_S = 60.0


@blueprint.route("/metrics", name="metrics")
class MetricsView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, settings.web.api_token.get_secret_value()):
            return self.json({"error": "missing or wrong bearer token"}, status=401)
        body = generate_latest(runtime.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


@blueprint.route("/livez", name="livez")
class LiveView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json({"live": True})


def readiness() -> tuple[bool, dict[str, Any]]:
    """Ready once table recovery completed and no sink has failed for too long."""
    reasons: list[str] = []
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    if not recovery.completed.is_set() or app.in_recovery:
        reasons.append("table recovery in progress")
    if app.rebalancing:
        reasons.append("rebalancing")
    sinks = {}
    now = time.time()
    for name, health in runtime.sinks.health().items():
        sinks[name] = dataclasses.asdict(health)
        since = health.failing_since
        if since is not None and now - since > SINK_FAILING_THRESHOLD_S:
            reasons.append(f"sink {name} failing for {now - since:.0f}s: {health.last_error}")
    return not reasons, {"ready": not reasons, "reasons": reasons, "sinks": sinks}


@blueprint.route("/readyz", name="readyz")
class ReadyView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        ok, body = readiness()
        return self.json(body, status=200 if ok else 503)


blueprint.register(app, url_prefix="")
