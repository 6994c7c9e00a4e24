"""``POST /api/v1/events/{source}``: HTTP ingest onto the raw topics.

202 means the broker acknowledged every accepted event.  The view uses a producer of
its own with a short delivery timeout, so a broker outage answers 503 instead of
leaving records in a buffer that could still be delivered after the caller gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import mode
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust import web

from collector.agents.runtime import Runtime
from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.models import Limits
from collector.models.contract import JSON_CONTENT_TYPE
from collector.models.proto import CONTENT_TYPE_HEADER
from collector.observability import tracing
from collector.web.ingest_logic import BodyError, IngestPlan, Planner, parse_body
from collector.web.ingest_proto import body_format, check_version, parse_protobuf_body
from collector.web.ops import runtime_of

log = logging.getLogger(__name__)

SEND_TIMEOUT = 5.0
#: items validated between two yields to the event loop (~5 ms of work)
PLAN_CHUNK = 1000
#: how long a request waits for a parsing slot before it is told to come back
SLOT_WAIT_S = 2.0
#: envelopes are JSON whatever the body was, and whatever the source's default format
RAW_HEADERS = [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())]


class IngestProducer(mode.Service):
    """A lazily started producer; a broker that is down at start-up is not fatal."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        #: bounds the bodies held and parsed at once: a burst of 4 MB bodies is queued
        #: (unread, so unbuffered) instead of parsed side by side
        self.slots = asyncio.Semaphore(settings.ingest.max_concurrent_requests)

    async def _get(self) -> AIOKafkaProducer:
        settings = self.settings
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **client_kwargs(settings),
                    acks="all",
                    # a retried produce request is not written twice (503 -> client retry
                    # duplicates remain; the consumer's event_id dedupe absorbs those)
                    enable_idempotence=True,
                    linger_ms=2,
                    request_timeout_ms=int(SEND_TIMEOUT * 1000),
                    max_request_size=max(1_048_576, settings.ingest.max_message_bytes * 2),
                )
                try:
                    await asyncio.wait_for(producer.start(), SEND_TIMEOUT)
                except BaseException:
                    # a producer that failed to start still holds a client: close it, or
                    # every request during an outage leaks one ("Unclosed AIOKafkaProducer")
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send_all(self, topic: str, envelopes: list[tuple[str, bytes]]) -> None:
        """Send and wait for every acknowledgement; raise on any failure.

        With ``app.tracing`` each record carries the ingest span's ``traceparent``."""
        producer = await self._get()
        headers = tracing.inject(list(RAW_HEADERS))
        futures = [
            await producer.send(topic, value, key=user_id.encode(), headers=headers)
            for user_id, value in envelopes
        ]
        await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT + 1)

    async def on_stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


blueprint = web.Blueprint("ingest")


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (read no further than that)."""
    length = request.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    content: Any = request.content  # type: ignore[attr-defined]
    body = await content.read(limit + 1)
    while len(body) <= limit:
        more = await content.read(limit + 1 - len(body))
        if not more:
            break
        body += more
    return None if len(body) > limit else bytes(body)


@blueprint.route("/api/v1/events/{source}", name="events")
class IngestView(web.View):
    """Validate, then produce envelopes per user and wait for the broker's ack."""

    async def post(self, request: web.Request, source: str) -> web.Response:
        # the bearer token (web.ingest_token) was checked by collector.web.auth
        runtime = runtime_of(self)
        settings = runtime.settings
        slots = runtime.ingest_producer.slots
        if source not in settings.kafka.sources:
            return self.json({"error": f"unknown source {source!r}",
                              "sources": settings.kafka.sources}, status=404)
        try:
            async with asyncio.timeout(SLOT_WAIT_S):
                await slots.acquire()
        except TimeoutError:
            return self.json({"error": "too many ingest requests in progress; retry"},
                             status=503, headers={"Retry-After": "1"})
        try:
            plan = await self._plan(request, source, settings)
        finally:
            slots.release()
        if isinstance(plan, IngestPlan):
            with tracing.span("collector.ingest", {"collector.source": source,
                                                   "collector.accepted": plan.accepted,
                                                   "collector.rejected": plan.rejected_total},
                              parent=tracing.extract(request.headers), kind="SERVER"):
                return await self._produce(source, plan, runtime)
        return plan

    async def _plan(self, request: web.Request, source: str, settings: Settings
                    ) -> IngestPlan | web.Response:
        """Read, parse and validate one body, never long on the loop (slot held)."""
        limit = settings.web.max_body_bytes
        body = await read_limited(request, limit)
        if body is None:
            return self.json({"error": f"body larger than {limit} bytes"}, status=413)
        ingest = settings.ingest
        try:
            check_version(request.headers.get("Collector-Schema"))
            media = body_format(request.headers.get("Content-Type"))
            if media.protobuf:
                items = parse_protobuf_body(body, media, ingest.max_request_events,
                                            ingest.allow_unknown_fields)
            else:
                items = parse_body(body, ingest.max_request_events)
        except BodyError as exc:
            return self.json({"error": str(exc)}, status=exc.status)
        del body
        planner = Planner(source, Limits.from_settings(ingest), int(time.time() * 1000),
                          ingest.max_echoed_rejects)
        for start in range(0, len(items), PLAN_CHUNK):
            if start:
                await asyncio.sleep(0)
            planner.add(items[start:start + PLAN_CHUNK], start)
        return planner.finish()

    async def _produce(self, source: str, plan: IngestPlan, runtime: Runtime
                       ) -> web.Response:
        metrics, settings = runtime.metrics, runtime.settings
        if plan.envelopes:
            try:
                await runtime.ingest_producer.send_all(settings.kafka.raw_topic(source),
                                                       plan.envelopes)
            except (KafkaError, TimeoutError, OSError) as exc:
                log.warning("ingest: broker unavailable: %r", exc)
                metrics.http_ingest.labels(source, "unavailable").inc(plan.accepted)
                return self.json({"error": "broker unavailable; nothing was accepted",
                                  "accepted": 0}, status=503, headers={"Retry-After": "5"})
        metrics.http_ingest.labels(source, "accepted").inc(plan.accepted)
        metrics.http_ingest.labels(source, "rejected").inc(plan.rejected_total)
        return self.json(plan.answer(), status=202)
