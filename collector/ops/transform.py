"""User-supplied replay transforms: ``module:function`` or ``file.py:function``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

#: (original payload bytes, the DeadLetter) -> bytes, str, dict/list (JSON) or None
Transform = Callable[[bytes, Any], Any]


def load_transform(spec: str) -> Transform:
    """``package.module:function`` or ``path/to/file.py:function``.

    The function gets the original bytes and the :class:`DeadLetter`, and returns bytes
    or str to send, a dict or list to send as JSON, or None to skip the record.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"transform {spec!r} must look like module:function")
    if target.endswith(".py"):
        path = Path(target)
        module_spec = importlib.util.spec_from_file_location(f"_replay_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # the current directory, as `python -m` would
        module = importlib.import_module(target)
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{spec!r}: {name} is not a function of {target}")
    return function  # type: ignore[no-any-return]


def as_bytes(result: Any) -> bytes | None:
    if result is None or isinstance(result, bytes):
        return result
    if isinstance(result, str):
        return result.encode("utf-8")
    if isinstance(result, dict | list):
        return orjson.dumps(result)
    raise TypeError(f"a transform returns bytes, str, dict, list or None, not "
                    f"{type(result).__name__}")
