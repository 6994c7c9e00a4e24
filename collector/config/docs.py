"""Render docs/configuration.md from the settings model, so the two cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from collector.config.aggregates import AggregateSettings
from collector.config.settings import Settings

HEADER = """# Configuration

Generated from `collector/config/settings.py` by `collector config docs`; a test fails
when this file and the model drift apart.

Precedence, lowest first: the built-in defaults (they match the local stack), then the
INI file named by `COLLECTOR_CONFIG` (section = the part before the dot), then the
environment variables. An invalid value stops start-up with exit status 2 and a message
naming every bad field. Secret values are never printed.
"""


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(secret, empty)" if not value.get_secret_value() else "(secret, set)"
    if value == "":
        return "(empty)"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render() -> str:
    """The whole markdown document."""
    lines = [HEADER]
    for section, sfield in Settings.model_fields.items():
        model = sfield.annotation
        if section == "aggregates":
            lines += _aggregates()
            continue
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines.append(f"## `[{section}]`\n")
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            lines.append(doc[0] + "\n")
        lines.append("| setting | env var | default | meaning |")
        lines.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            env = f"COLLECTOR_{section.upper()}__{name.upper()}"
            default = _default(field).replace("|", "\\|")
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{section}.{name}` | `{env}` | `{default}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def _aggregates() -> list[str]:
    """The keys of one ``[aggregate.<name>]`` section (docs/aggregates.md explains them)."""
    lines = ["## `[aggregate.<name>]`\n",
             "Aggregates declared without code, any number of them; `<name>` (lowercase "
             "letters, digits, `_`) is the MySQL table, the InfluxDB measurement and the "
             "query path `/api/v1/aggregates/<name>`. See docs/aggregates.md.\n",
             "| setting | env var | default | meaning |", "|---|---|---|---|"]
    for name, field in AggregateSettings.model_fields.items():
        env = f"COLLECTOR_AGGREGATES__<NAME>__{name.upper()}"
        default = _default(field).replace("|", "\\|")
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `aggregate.<name>.{name}` | `{env}` | `{default}` | {meaning} |")
    lines.append("")
    return lines


def all_env_vars() -> set[str]:
    """Every environment variable the model reads (for static checks of deploy files)."""
    names = {"COLLECTOR_CONFIG"}
    for section, sfield in Settings.model_fields.items():
        model = sfield.annotation
        if section == "aggregates":
            continue  # COLLECTOR_AGGREGATES__<NAME>__<KEY>: the names are the user's
        assert isinstance(model, type) and issubclass(model, BaseModel)
        names.update(f"COLLECTOR_{section.upper()}__{n.upper()}" for n in model.model_fields)
    return names


def write(path: Path) -> None:
    path.write_text(render(), encoding="utf-8")
