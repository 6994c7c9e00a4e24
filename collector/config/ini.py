"""INI file settings source, like the original system's ``config.ini``.

Each ``[section]`` maps onto one nested settings model (``[kafka]`` onto
``Settings.kafka``); the file is found through ``COLLECTOR_CONFIG``.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from collector.config.errors import SettingsError

CONFIG_ENV = "COLLECTOR_CONFIG"
#: INI sections that declare an aggregate: ``[aggregate.<name>]``
AGGREGATE_SECTION = "aggregate."


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    """Parse ``path`` into ``{section: {key: value}}``; a clear error if it cannot."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise SettingsError([f"{CONFIG_ENV}: config file {str(path)!r} does not exist"]) from None
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError([f"{CONFIG_ENV}: cannot parse {str(path)!r}: {first}"]) from None
    return {section: dict(parser.items(section)) for section in parser.sections()}


class IniSettingsSource(PydanticBaseSettingsSource):
    """Feeds the INI sections to pydantic, which validates them like any other input."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None = None) -> None:
        super().__init__(settings_cls)
        raw = os.environ.get(CONFIG_ENV, "")
        self._path = path if path is not None else (Path(raw) if raw else None)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole mapping at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        # Unknown sections surface as "extra field" errors naming the section.
        return nest_aggregates(read_ini(self._path))


def nest_aggregates(sections: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``[aggregate.<name>]`` sections become ``aggregates.<name>`` (collector.config.
    aggregates), the shape ``COLLECTOR_AGGREGATES__<NAME>__<KEY>`` gives too."""
    out: dict[str, Any] = {}
    for section, values in sections.items():
        if section.startswith(AGGREGATE_SECTION):
            out.setdefault("aggregates", {})[section.removeprefix(AGGREGATE_SECTION)] = values
        else:
            out[section] = values
    return out
