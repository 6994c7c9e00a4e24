"""The OpenAPI 3.1 document of collector's HTTP endpoints, as a plain dict.

Built by a function (the source list comes from settings), served at
``GET /api/openapi.json``; a test checks every route the server has is described.  The
bodies' schemas come from the pydantic models in :mod:`collector.web.schemas` (3.1, so
they are JSON Schema 2020-12 as pydantic writes it), the query paths from the aggregate
definitions.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from collector.aggregates import DEFINITIONS, Aggregate, KeyField
from collector.web.schemas import MODELS

_REFS = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _REFS.format(model=model)}


@cache
def component_schemas() -> dict[str, Any]:
    """The models' schemas, once per process (pydantic takes milliseconds to build them)."""
    _, top = models_json_schema([(m, "serialization") for m in MODELS], ref_template=_REFS)
    schemas: dict[str, Any] = top["$defs"]
    return schemas
_TIME_DOC = "RFC 3339 with an offset (2026-01-01T00:00:00Z) or epoch milliseconds."


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


_RANGE = [
    _query_param("from", f"Earliest window start, inclusive. {_TIME_DOC} Default: to - 1 h."),
    _query_param("to", f"Latest window start, exclusive. {_TIME_DOC} Default: now."),
]

_QUERY_ERRORS = {
    "400": _json(_ERROR, "A bad parameter; `field` names it."),
    "401": _json(_ERROR, "web.api_token is set and the bearer token is missing or wrong."),
    "503": {
        "description": "A needed partition has no owner, is recovering, or its worker did "
        "not answer. Retry after the `Retry-After` seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": _ERROR}},
    },
}


def _windows(key: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The ``Windows`` body with one aggregate's key and values spelled out."""
    schemas = component_schemas()
    window = copy.deepcopy(schemas["Window"])
    window["properties"]["key"] = {"type": "object", "properties": key}
    window["properties"]["values"] = {"type": "object", "properties": values}
    page = copy.deepcopy(schemas["Windows"])
    page["properties"]["windows"]["items"] = window
    return page


_STR = {"type": "string"}


def _query_op(summary: str, params: list[dict[str, Any]], schema: dict[str, Any],
              tag: str = "query") -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": [tag], "parameters": params + _RANGE,
                    "security": [{"bearer": []}, {}],
                    "responses": {"200": _json(schema, "The windows in the range."),
                                  **_QUERY_ERRORS}}}


def _key_param(key: KeyField, route: str, sources: list[str]) -> dict[str, Any]:
    """A key field as a path parameter (when the route names it) or a query filter."""
    if f"{{{key.name}}}" in route:
        return {"name": key.name, "in": "path", "required": True,
                "schema": {"type": "string", **({"pattern": key.pattern} if key.pattern else {})}}
    schema: dict[str, Any] = {}
    if key.sources:
        schema["enum"] = list(sources)
    if key.pattern:
        schema["pattern"] = key.pattern
    return _query_param(key.name, key.doc, **schema)


def _aggregate_op(defn: Aggregate, sources: list[str]) -> dict[str, Any]:
    """The query endpoint of an aggregate, from its definition."""
    return _query_op(f"{defn.name} windows ({defn.window}) {defn.summary}",
                     [_key_param(k, defn.route, sources) for k in defn.keys],
                     _windows({k: _STR for k in defn.key_names}, defn.values_schema()))


def openapi_document(sources: list[str]) -> dict[str, Any]:
    """The document for a worker configured with ``sources``."""
    paths: dict[str, Any] = {d.route: _aggregate_op(d, sources) for d in DEFINITIONS}
    paths.update({
        "/api/v1/events/{source}": {"post": {
            "summary": "Ingest events (one object, an array, NDJSON, or a protobuf "
                       "collector.v1.Event or Envelope) onto a raw topic",
            "tags": ["ingest"],
            "parameters": [{"name": "source", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": list(sources)}},
                           {"name": "Collector-Schema", "in": "header", "required": False,
                            "schema": {"type": "string", "enum": ["1"]}}],
            "security": [{"bearer": []}, {}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {}}, "application/x-ndjson": {"schema": {}},
                "application/x-protobuf": {"schema": {"type": "string",
                                                      "format": "binary"}}}},
            "responses": {
                "202": _json(_ref("IngestResult"), "The broker acknowledged every accepted "
                    "event; `rejected` lists the first ingest.max_echoed_rejects rejects, "
                    "the counts cover all."),
                "400": _json(_ERROR, "The body is not JSON (or not the protobuf message "
                                     "its Content-Type names), or Collector-Schema is not "
                                     "a supported version (unsupported_version)."),
                "415": _json(_ERROR, "A protobuf messageType other than collector.v1.Event "
                                     "or collector.v1.Envelope."),
                "401": _json(_ERROR, "web.ingest_token is set and the token is wrong."),
                "404": _json(_ERROR, "Unknown source."),
                "413": _json(_ERROR, "Body larger than web.max_body_bytes, or more events "
                                     "than ingest.max_request_events."),
                "503": _json(_ERROR, "Broker unavailable, or too many requests in progress; "
                                     "nothing was accepted (see Retry-After)."),
            }}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "tags": ["ops"], "security": [{"bearer": []}, {}],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": _STR}}},
                          "401": _json(_ERROR, "Wrong or missing bearer token.")}}},
        "/livez": {"get": {"summary": "Liveness: serves HTTP and its fetcher consumes",
                           "tags": ["ops"],
                           "responses": {"200": _json(_ref("Liveness"), "Alive."),
                                         "503": _json(_ref("Liveness"),
                                                      "The fetcher died: restart.")}}},
        "/readyz": {"get": {
            "summary": "Readiness: recovered, commits progressing, topics writable",
            "tags": ["ops"],
            "responses": {"200": _json(_ref("Readiness"), "Ready."),
                          "503": _json(_ref("Readiness"), "Not ready; `reasons` says why.")}}},
        "/healthz/sinks": {"get": {
            "summary": "Sink health (not part of readiness)", "tags": ["ops"],
            "security": [{"bearer": []}, {}],
            "responses": {"200": _json(_ref("SinksHealth"), "Every sink writes."),
                          "503": _json(_ref("SinksHealth"), "A sink has been failing for "
                                       "web.ready_sink_failing_seconds; `reasons` says which."),
                          "401": _json(_ERROR, "Wrong or missing bearer token.")}}},
        "/api/v1/summary": {"get": {
            "summary": "The JSON summary the web view shows", "tags": ["ops"],
            "security": [{"bearer": []}, {}],
            "responses": {"200": _json({"type": "object"}, "Totals, rates, lag, sinks."),
                          "401": _json(_ERROR, "Wrong or missing bearer token.")}}},
        "/": {"get": {"summary": "The web view (HTML status page)", "tags": ["ops"],
                      "responses": {"200": {"description": "HTML",
                                            "content": {"text/html": {"schema": _STR}}}}}},
        "/api/openapi.json": {"get": {
            "summary": "This document", "tags": ["ops"],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document.")}}},
    })
    return {
        "openapi": "3.1.0",
        "info": {"title": "collector", "version": "1",
                 "description": "Event collection: HTTP ingest, window queries, operations."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas(),
        },
    }
