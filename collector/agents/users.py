"""Profile updates from the users topic: write MySQL, then invalidate the cache.

An update is retried until MySQL takes it (dropping it would leave a stale profile
forever); a message that is not a valid update is dead-lettered, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
import orjson
from pydantic import ValidationError

from collector.agents.runtime import Runtime
from collector.enrichment import SourceError, UserProfile, upsert_user
from collector.models import DEADLETTER_REASON_HEADER, Reason, Reject, dead_letter_record
from collector.models.users import ProfileUpdate

log = logging.getLogger(__name__)

def parse_update(value: bytes | None) -> ProfileUpdate | Reject:
    """A valid update, or the reject that explains why not."""
    try:
        data = orjson.loads(value or b"")
    except (orjson.JSONDecodeError, RecursionError):
        return Reject(Reason.MALFORMED_JSON, [{"loc": "", "msg": "not valid JSON"}], None, None)
    try:
        return ProfileUpdate.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]}
            for err in exc.errors()
        ]
        return Reject(Reason.SCHEMA_VIOLATION, errors, None, None)  # type: ignore[arg-type]


def register(app: faust.App, runtime: Runtime) -> None:
    """The users topic's agent."""
    kafka = runtime.settings.kafka
    users_topic = app.topic(kafka.users_topic, key_serializer="raw", value_serializer="raw",
                            partitions=kafka.partitions)

    async def apply_profile_updates(stream: faust.StreamT[bytes]) -> None:
        """Apply each update in order; per-key order is kept by the topic's partitioning."""
        async for event in stream.events():
            message = event.message
            parsed = parse_update(message.value)
            if isinstance(parsed, Reject):
                payload = dead_letter_record(
                    parsed, source="users", topic=message.topic, partition=message.partition,
                    offset=message.offset, raw=message.value,
                    received_at_ms=int(time.time() * 1000),
                )
                headers = [(DEADLETTER_REASON_HEADER, parsed.reason.value.encode())]
                # awaited until the broker acked it: the event (and its offset) is acked
                # only when this body moves on
                await (await runtime.output.send(kafka.deadletter_topic, message.key,
                                                 payload, headers))
                continue
            profile = UserProfile(parsed.user_id, parsed.segment, parsed.country, parsed.plan)
            delay = 0.2
            while True:
                try:
                    await upsert_user(runtime.repo, runtime.enricher, profile)
                    break
                except SourceError as exc:
                    log.warning("profile update for a user failed (%r); retry in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    app.agent(users_topic, name="collector.users")(apply_profile_updates)
