"""Operational endpoints: Prometheus metrics and health probes.

Read-only GETs.  Metrics come from the registry the runtime created its metrics against,
so nothing here touches prometheus_client's global registry.
"""

from __future__ import annotations

import time
from typing import Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.agents.runtime import Runtime
from collector.config import Settings
from collector.observability import health
from collector.observability.health import Thresholds

blueprint = web.Blueprint("ops")


@blueprint.route("/metrics", name="metrics")
class MetricsView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        body = generate_latest(runtime_of(self).registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


@blueprint.route("/livez", name="livez")
class LiveView(web.View):
    """Live while the process serves HTTP and its fetcher runs: a fetcher that died
    leaves a worker that answers HTTP but consumes nothing, which only a restart fixes."""

    async def get(self, request: web.Request) -> web.Response:
        failure = getattr(self.app, "fetcher_failure", None)
        if failure:
            return self.json({"live": False, "reason": failure}, status=503)
        return self.json({"live": True})


def runtime_of(view: web.View) -> Runtime:
    """The worker's runtime, which the app factory hangs on the app."""
    runtime: Runtime = view.app.runtime  # type: ignore[attr-defined]
    return runtime


def _thresholds(settings: Settings) -> Thresholds:
    web_settings = settings.web
    return Thresholds(stall_s=web_settings.ready_stall_seconds,
                      sink_failing_s=web_settings.ready_sink_failing_seconds,
                      produce_failing_s=web_settings.ready_produce_failing_seconds)


def readiness(runtime: Runtime) -> tuple[bool, dict[str, Any]]:
    """Ready once recovered, with commits progressing and every topic writable."""
    app = runtime.app
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    thresholds = _thresholds(runtime.settings)
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
        runtime = runtime_of(self)
        ok, body = health.sink_status(runtime.sinks.health(), time.time(),
                                      _thresholds(runtime.settings))
        return self.json(body, status=200 if ok else 503)


@blueprint.route("/readyz", name="readyz")
class ReadyView(web.View):
    async def get(self, request: web.Request) -> web.Response:
        ok, body = readiness(runtime_of(self))
        return self.json(body, status=200 if ok else 503)
