"""Aggregates declared in configuration (no code): the INI section ``[aggregate.<name>]``
or ``COLLECTOR_AGGREGATES__<NAME>__<KEY>`` environment variables.

Everything a definition is built from is checked here, so a bad one stops start-up with
exit 2 naming the field, before anything connects.  Every name that becomes a MySQL
identifier (the aggregate's table, its columns) is whitelisted here: lowercase letters,
digits and ``_``, and the SQL that uses them quotes them too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from collector.config.section import Section

#: a table or column name: never more than this (MySQL allows 64)
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: the ``<key>`` of ``properties.<key>``: its column is ``properties_<key>`` (lowercase)
PROPERTY_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: tables collector owns: a configured aggregate may not take one of their names
#: (tests/unit/test_configured_aggregates.py checks every built-in definition is here)
RESERVED: Final = frozenset({"event_stats", "segment_stats", "user_activity", "user_sessions",
                             "users", "schema_migrations"})
#: event fields an aggregate may group by -> the width of their MySQL key column
GROUP_FIELDS: Final = {"source": 32, "type": 64, "segment": 64, "country": 8,
                       "device_id": 64, "plan": 32}
PROPERTY_WIDTH: Final = 256  # properties strings are at most 256 characters
#: InnoDB keys hold 3072 bytes, 4 per utf8mb4 character (the window columns need a few)
MAX_KEY_CHARS: Final = 760
#: fields distinct() counts; sum/min/max take ``value`` or a property
DISTINCT_FIELDS: Final = frozenset({"user_id", "type", "source", "segment", "country",
                                    "device_id", "plan"})
#: characters the distinct() values of one window may take: each window's state travels
#: whole in a partial and a changelog record, and Kafka's default message limit is 1 MB
MAX_DISTINCT_CHARS: Final = 262_144
#: columns every aggregate table has; no group-by or measure may use their names
COMMON: Final = frozenset({"window_start", "window_seconds", "revision", "final",
                           "updated_at"})
#: columns a session window's table has besides COMMON and the measures
SESSION_COLUMNS: Final = ("user_id", "session_end", "duration_seconds", "merged_into")
_MEASURE_RE: Final = re.compile(
    r"^(?:(?P<alias>[^=()]+)=)?(?P<fn>[a-z_]+)(?:\((?P<field>[^()]*)\))?$")
MEASURES: Final = ("count", "sum", "min", "max", "distinct")

WindowKind = Literal["tumbling", "hopping", "session"]


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def column_of(field: str) -> str:
    """The MySQL column (and query parameter) of a group-by field."""
    return field.replace(".", "_")


def _property(field: str) -> str | None:
    """``<key>`` of ``properties.<key>``; ValueError if the key is not allowed."""
    if not field.startswith("properties."):
        return None
    key = field.removeprefix("properties.")
    if not PROPERTY_RE.match(key):
        raise ValueError(f"property key {key!r} must match {PROPERTY_RE.pattern}")
    return key


class MeasureSpec(Section):
    """One parsed measure: ``[alias=]fn[(field)]``."""

    name: str
    fn: Literal["count", "sum", "min", "max", "distinct"]
    field: str | None = None


def parse_measure(text: str) -> MeasureSpec:
    """``count``, ``sum(value)``, ``revenue=sum(properties.amount)``, ``distinct(user_id)``."""
    match = _MEASURE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"measure {text!r} is not [name=]function[(field)]")
    alias, fn, field = match.group("alias"), match.group("fn"), match.group("field")
    if fn not in MEASURES:
        raise ValueError(f"unknown measure {fn!r}; one of {', '.join(MEASURES)}")
    field = field.strip() if field is not None else None
    if fn == "count":
        if field:
            raise ValueError("count takes no field: it counts events")
    elif not field:
        raise ValueError(f"{fn} needs a field: {fn}(field)")
    elif fn == "distinct":
        if field not in DISTINCT_FIELDS and _property(field) is None:
            raise ValueError(f"distinct({field}): unknown field; one of "
                             f"{', '.join(sorted(DISTINCT_FIELDS))} or properties.<key>")
    elif field != "value" and _property(field) is None:
        raise ValueError(f"{fn}({field}): unknown field; value or properties.<key>")
    name = alias.strip() if alias else (fn if field is None else f"{fn}_{column_of(field)}")
    if not NAME_RE.match(name):
        raise ValueError(f"measure name {name!r} must match {NAME_RE.pattern}")
    return MeasureSpec(name=name, fn=fn, field=field)  # type: ignore[arg-type]


class AggregateSettings(Section):
    """One aggregate declared in configuration (see docs/aggregates.md)."""

    window: WindowKind = Field(
        default="tumbling",
        description="tumbling, hopping, or session (per user: a user's events separated by "
        "an inactivity gap of gap_seconds; group_by must be empty).")
    group_by: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Comma-separated event fields the windows are keyed by: source, type, "
        "segment, country, device_id, plan, properties.<key> (at least one; none for a "
        "session window, which is keyed by user_id).")
    size_seconds: int = Field(
        default=0, ge=0, le=86_400,
        description="Window size (0: windows.tumbling_seconds or hopping_size_seconds).")
    step_seconds: int = Field(
        default=0, ge=0, le=86_400,
        description="Hopping advance (0: windows.hopping_step_seconds); tumbling: unused.")
    gap_seconds: int = Field(
        default=0, ge=0, le=86_400,
        description="Session inactivity gap (0: windows.session_gap_seconds); at least "
        "windows.tumbling_seconds. Session windows only.")
    measures: Annotated[list[str], NoDecode] = Field(
        default=["count"],
        description="Comma-separated [name=]count | sum(f) | min(f) | max(f) | distinct(f).")
    sinks: Annotated[list[Literal["mysql", "influxdb"]], NoDecode] = Field(
        default=["mysql", "influxdb"], description="Where its rows are written.")
    max_distinct: int = Field(
        default=1000, ge=1, le=100_000,
        description="Values a distinct() keeps per window; past it the count stops and its "
        "<name>_truncated column is set.")

    @field_validator("group_by", "measures", "sinks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: list[str], info: ValidationInfo) -> list[str]:
        session = info.data.get("window") == "session"
        if session and value:
            raise ValueError("a session window is per user (keyed by user_id): leave "
                             "group_by empty")
        if not value and not session:
            raise ValueError("at least one field is needed")
        if len(value) > 4:
            raise ValueError("at most 4 fields")
        width = 0
        for field in value:
            if field == "user_id":
                raise ValueError("user_id: per-user windows are user_activity's; group by "
                                 "other fields and count users with distinct(user_id)")
            prop = _property(field)
            if prop is None and field not in GROUP_FIELDS:
                raise ValueError(f"unknown field {field!r}; one of "
                                 f"{', '.join(GROUP_FIELDS)} or properties.<key>")
            width += PROPERTY_WIDTH if prop is not None else GROUP_FIELDS[field]
        if len(set(value)) != len(value):
            raise ValueError("fields must be unique")
        if width > MAX_KEY_CHARS:
            raise ValueError(f"key columns of {width} characters; at most {MAX_KEY_CHARS} "
                             f"(a properties.<key> takes {PROPERTY_WIDTH})")
        return value

    @field_validator("measures")
    @classmethod
    def _measures(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one measure is needed")
        for text in value:
            parse_measure(text)
        return value

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one sink is needed (mysql, influxdb)")
        return value

    @model_validator(mode="after")
    def _columns(self) -> AggregateSettings:
        if self.window == "tumbling" and self.step_seconds:
            raise ValueError("step_seconds is for hopping windows only")
        if self.window != "session" and self.gap_seconds:
            raise ValueError("gap_seconds is for session windows only")
        if self.window == "session" and "mysql" not in self.sinks:
            raise ValueError("sinks: a session window needs mysql (a session leaves the "
                             "state once MySQL confirmed its last row)")
        if self.window == "session" and (self.size_seconds or self.step_seconds):
            raise ValueError("size_seconds and step_seconds are not for session windows "
                             "(gap_seconds is)")
        if self.window == "hopping" and self.size_seconds and self.step_seconds:
            if self.step_seconds > self.size_seconds:
                raise ValueError("step_seconds must not exceed size_seconds")
            if self.size_seconds % self.step_seconds:
                raise ValueError("size_seconds must be a multiple of step_seconds")
        widths = [GROUP_FIELDS.get(m.field, PROPERTY_WIDTH) if m.field != "user_id" else 64
                  for m in self.parsed_measures() if m.fn == "distinct" and m.field]
        if self.max_distinct * sum(widths) > MAX_DISTINCT_CHARS:
            raise ValueError(f"max_distinct {self.max_distinct} x the distinct() fields' "
                             f"{sum(widths)} characters exceeds {MAX_DISTINCT_CHARS}: a "
                             "window's state must fit in one Kafka message; lower "
                             "max_distinct")
        seen: dict[str, str] = {}
        names = [(column_of(f), f"group_by {f}") for f in self.group_by]
        if self.window == "session":
            names += [(c, "the session window") for c in SESSION_COLUMNS]
        for spec in self.parsed_measures():
            names.append((spec.name, f"measure {spec.name}"))
            if spec.fn == "distinct":
                names.append((f"{spec.name}_truncated", f"measure {spec.name}"))
        for column, what in names:
            if column in COMMON:
                raise ValueError(f"{what}: column {column!r} is one every aggregate has")
            if column in seen:
                raise ValueError(f"{what}: column {column!r} is also {seen[column]}'s")
            seen[column] = what
        return self

    def parsed_measures(self) -> list[MeasureSpec]:
        return [parse_measure(text) for text in self.measures]


def check_name(name: str) -> str:
    """An aggregate's name is its MySQL table, InfluxDB measurement and query path."""
    if not NAME_RE.match(name):
        raise ValueError(f"aggregate name {name!r} must match {NAME_RE.pattern}")
    if name in RESERVED:
        raise ValueError(f"aggregate name {name!r} is taken by a collector table")
    return name


def _check_names(value: Any) -> Any:
    if isinstance(value, dict):
        for name in value:
            check_name(str(name))
    return value


#: the ``aggregates`` setting: name -> declaration, names checked before anything else
Aggregates = Annotated[dict[str, AggregateSettings], BeforeValidator(_check_names)]


def window_of(agg: AggregateSettings, windows: Any) -> tuple[int, int]:
    """(size, step) in seconds, the ``windows.*`` defaults resolved (``windows``: the
    WindowSettings)."""
    if agg.window == "hopping":
        return (agg.size_seconds or windows.hopping_size_seconds,
                agg.step_seconds or windows.hopping_step_seconds)
    if agg.window == "session":
        gap = agg.gap_seconds or windows.session_gap_seconds
        return gap, gap
    size = agg.size_seconds or windows.tumbling_seconds
    return size, size


def check_window(name: str, agg: AggregateSettings, windows: Any) -> None:
    """ValueError naming the aggregate's field if its window, with the ``windows.*``
    defaults, is inconsistent or outlives the state's expiry."""
    size, step = window_of(agg, windows)
    where = f"aggregates.{name}"
    if agg.window == "session":
        if size < windows.tumbling_seconds:
            raise ValueError(f"{where}.gap_seconds: {size} is less than "
                             f"windows.tumbling_seconds {windows.tumbling_seconds} (sessions "
                             "are built from the per-user tumbling windows)")
        return
    if step > size:
        raise ValueError(f"{where}.step_seconds: {step} exceeds size_seconds {size}")
    if size % step:
        raise ValueError(f"{where}.size_seconds: {size} is not a multiple of "
                         f"step_seconds {step}")
    if size + windows.allowed_lateness_seconds > windows.expires_seconds:
        raise ValueError(f"{where}.size_seconds: {size} plus windows.allowed_lateness_seconds "
                         f"exceeds windows.expires_seconds {windows.expires_seconds}")


__all__ = [
    "RESERVED",
    "SESSION_COLUMNS",
    "AggregateSettings",
    "MeasureSpec",
    "check_name",
    "check_window",
    "column_of",
    "parse_measure",
    "window_of",
]
