"""Load and validate settings, turning pydantic's errors into one readable message."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from pydantic import BaseModel, SecretStr, ValidationError

from collector.config.errors import SettingsError
from collector.config.settings import Settings


def _field(loc: tuple[Any, ...]) -> Any:
    """The annotation of the field at ``loc``, or None when there is no such field."""
    model: Any = Settings
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
    return model


def _showable(loc: tuple[Any, ...]) -> bool:
    """A value may be echoed only for a known field that is not a secret: a misspelt
    ``..._TOKN`` is unknown, and its value is as secret as the token's."""
    annotation = _field(loc)
    return annotation is not None and annotation is not SecretStr


def _suggestion(loc: tuple[Any, ...]) -> str:
    section = _field(loc[:-1])
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f"; did you mean {'.'.join(map(str, loc[:-1]))}.{close[0]}?" if close else ""


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable that sets the field at ``loc``."""
    return "COLLECTOR_" + "__".join(str(p).upper() for p in loc)


def _describe(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not isinstance(p, int))
    dotted = ".".join(str(p) for p in loc) or "settings"
    msg = error["msg"].removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        msg += _suggestion(loc)
    if len(loc) > 2 and loc[0] == "aggregates":
        ini = f"[aggregate.{loc[1]}] {'.'.join(map(str, loc[2:]))}"
        text = f"{dotted} ({env_name(loc)}, INI {ini}): {msg}"
    elif len(loc) > 1:
        ini_key = ".".join(map(str, loc[1:]))
        text = f"{dotted} ({env_name(loc)}, INI [{loc[0]}] {ini_key}): {msg}"
    else:
        text = f"{dotted}: {msg}"
    shown_ok = isinstance(error.get("input"), str | int | float | bool)  # never a section dict
    if error.get("type") != "missing" and shown_ok and len(loc) > 1 and _showable(loc):
        shown = repr(error["input"])
        text += f" (got {shown[:80]})"
    return text


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; raise :class:`SettingsError` naming every bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError([_describe(err) for err in exc.errors()]) from None


def settings_for_env(env: Mapping[str, str]) -> Settings:
    """The settings a child process started with ``env`` added to ours will load.

    For tools that start workers (tests, benchmarks): they need the same view of topics,
    ports and stores.  ``os.environ`` is patched for the call only and restored.
    """
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_settings_or_exit(**overrides: Any) -> Settings:
    """For entry points: print the problems and exit 2 before anything connects."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _die(exc)


def _die(exc: SettingsError) -> NoReturn:
    print(exc.render(), file=sys.stderr)
    raise SystemExit(exc.exit_code)
