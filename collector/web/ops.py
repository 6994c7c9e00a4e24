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
    """Live while the process serves HTTP and its fetcher runs: a fetcher that died
    leaves a worker that answers HTTP but consumes nothing, which only a restart fixes."""

    async def get(self, request: web.Request) -> web.Response:
        failure = getattr(app, "fetcher_failure", None)
        if failure:
            return self.json({"live": False, "reason": failure}, status=503)
        return self.json({"live": True})


def _thresholds() -> Thresholds:
    web_settings = settings.web
    return Thresholds(stall_s=web_settings.ready_stall_seconds,
                      sink_failing_s=web_settings.ready_sink_failing_seconds,
                      produce_failing_s=web_settings.ready_produce_failing_seconds)


def readiness() -> tuple[bool, dict[str, Any]]:
    """Ready once recovered, with commits progressing and every topic writable."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    thresholds = _thresholds()
    return health.readiness(
        recovered=recovery.completed.is_set() and not app.in_recovery,
        rebalancing=bool(app.rebalancing),
        stalled=runtime.lag.stalled(thresholds.stall_s),
        sink_health=runtime.sinks.health(),
        now=time.time(),
        thresholds=thresholds,
        producing=runtime.output.health.topics,
    )


@blueprint.route("/healthz/sinks", name="sinks_health")
class SinksHealthView(web.View):
    """503 once a sink has failed for ``web.ready_sink_failing_seconds`` (alert on it,
    or on ``collector_sink_healthy``); the worker stays ready meanwhile."""

    async def get(self, request: web.Request) -> web.Response:
        ok, body = health.sink_status(runtime.sinks.health(), time.time(), _thresholds())
        return self.json(body, status=200 if ok else 503)


@blueprint.route("/readyz", name="readyz")
class ReadyView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        ok, body = readiness()
        return self.json(body, status=200 if ok else 503)


blueprint.register(app, url_prefix="")
