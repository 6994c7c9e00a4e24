"""The pydantic reference implementation of the event contract.

It states the contract declaratively and is the yardstick the lean validator in
:mod:`collector.models.validate` is tested against; it is too slow for the hot path
but fine for HTTP ingest, tooling and docs.  The RFC 3339 time is computed here from
the regex groups rather than with ``fromisoformat``, so the two paths do not share
that piece of code and a bug in one shows up as a disagreement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from collector.models.contract import (
    EPOCH,
    MAX_DEVICE_ID_CHARS,
    MAX_ID_CHARS,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_CHARS,
    MAX_PROPERTY_STR_CHARS,
    ONE_MS,
    RFC3339_RE,
    TYPE_PATTERN,
    USER_ID_PATTERN,
    ErrorItem,
    Limits,
    ts_range_error,
)

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PropertyValue = (
    Annotated[StrictStr, Field(max_length=MAX_PROPERTY_STR_CHARS)]
    | StrictBool
    | StrictInt
    | FiniteNumber
    | None
)
PropertyKey = Annotated[StrictStr, Field(max_length=MAX_PROPERTY_KEY_CHARS)]


def rfc3339_to_ms(text: str) -> int:
    """Epoch ms (UTC, truncated to the millisecond) of an RFC 3339 date-time."""
    match = RFC3339_RE.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time with an offset")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micros = int((match[7] or "").ljust(6, "0")[:6])
    local = datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    offset_min = 0
    if match[9] is not None:
        offset_min = int(match[10]) * 60 + int(match[11])
        if match[9] == "-":
            offset_min = -offset_min
    return (local - EPOCH) // ONE_MS - offset_min * 60_000


class Event(BaseModel):
    """One raw event.  Validate with ``context={"source", "limits", "now_ms"}``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]
    user_id: Annotated[StrictStr, Field(pattern=USER_ID_PATTERN)]
    type: Annotated[StrictStr, Field(pattern=TYPE_PATTERN)]
    ts: StrictInt | StrictStr
    value: FiniteNumber | None = None
    device_id: Annotated[StrictStr, Field(max_length=MAX_DEVICE_ID_CHARS)] | None = None
    properties: (
        Annotated[dict[PropertyKey, PropertyValue], Field(max_length=MAX_PROPERTIES)] | None
    ) = None
    source: StrictStr | None = None

    @field_validator("ts")
    @classmethod
    def _ts(cls, value: int | str, info: ValidationInfo) -> int:
        """Normalise to epoch ms and apply the window, which needs the context's clock."""
        if isinstance(value, str):
            try:
                value = rfc3339_to_ms(value)
            except ValueError as exc:  # the regex, or e.g. February 30th
                raise ValueError(f"ts is not an RFC 3339 date-time with an offset: {exc}") from None
        context = _context(info)
        problem = ts_range_error(value, context["limits"], context["now_ms"])
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The topic decides the source; a payload may only repeat it."""
        expected = _context(info)["source"]
        if value is not None and value != expected:
            raise ValueError(f"source must be absent or {expected!r}")
        return value


class LenientEvent(Event):
    """``Event`` for ``allow_unknown_fields``: unknown top-level fields are dropped."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _context(info: ValidationInfo) -> dict[str, Any]:
    if not isinstance(info.context, dict):
        raise TypeError("Event needs context={'source': ..., 'limits': ..., 'now_ms': ...}")
    return info.context


def _loc(loc: tuple[int | str, ...]) -> str:
    """Pydantic's loc as the contract's dotted path, without union-member tags."""
    if not loc:
        return ""
    if loc[0] == "properties" and len(loc) > 1:
        return f"properties.{loc[1]}"
    return str(loc[0])


def errors_of(exc: ValidationError) -> list[ErrorItem]:
    """One ErrorItem per location; a union's per-member messages are joined."""
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        messages = merged.setdefault(_loc(error["loc"]), [])
        if error["msg"] not in messages:
            messages.append(error["msg"])
    return [{"loc": loc, "msg": "; ".join(messages)} for loc, messages in merged.items()]


def validate_event_pydantic(
    obj: object, source: str, limits: Limits, now_ms: int
) -> tuple[dict[str, Any] | None, list[ErrorItem]]:
    """The reference twin of :func:`collector.models.validate.validate_event`."""
    model = LenientEvent if limits.allow_unknown_fields else Event
    context = {"source": source, "limits": limits, "now_ms": now_ms}
    try:
        event = model.model_validate(obj, context=context)
    except ValidationError as exc:
        return None, errors_of(exc)
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "type": event.type,
        "ts": event.ts,
        "value": event.value,
        "device_id": event.device_id,
        "properties": dict(event.properties) if event.properties is not None else {},
        "source": source,
    }, []
