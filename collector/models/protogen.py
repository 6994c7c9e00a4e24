"""The Python classes of the shipped ``.proto``, generated on first use.

Generated code is not committed: it would drift from the ``.proto`` and ties the
repository to one protobuf runtime (protoc's output checks the runtime's version).
Instead, the first call of :func:`pb2` in a process runs protoc (the one bundled in
``grpcio-tools``, a declared dependency, so a fresh ``pip install`` has it on every
platform with a wheel) into a temporary directory and imports the result.  That costs
about 20 ms once per process and needs no writable cache, no build hook and no
invalidation when the ``.proto`` or the runtime changes.  ``collector contract proto
--out DIR`` writes the same code for anyone who wants to look at it.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Final

#: include root of the shipped ``.proto`` files (package data)
PROTO_ROOT: Final = Path(__file__).resolve().parents[1] / "schemas"
#: the contract's ``.proto``, relative to :data:`PROTO_ROOT` (its name in descriptor pools)
PROTO_FILE: Final = "collector/v1/events.proto"
#: the name the generated module is imported as (private: not importable otherwise)
MODULE_NAME: Final = "_collector_v1_events_pb2"


class ProtocError(RuntimeError):
    """protoc could not compile the shipped ``.proto`` (a packaging problem)."""


def proto_path() -> Path:
    """The shipped ``.proto`` file."""
    return PROTO_ROOT / PROTO_FILE


def generate(out_dir: Path, *, pyi: bool = False) -> Path:
    """Run protoc on the shipped ``.proto`` into ``out_dir``; the ``_pb2.py`` path."""
    from grpc_tools import protoc  # imported here: only generation needs it

    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}"]
    if pyi:
        args.append(f"--pyi_out={out_dir}")
    code = protoc.main([*args, PROTO_FILE])
    if code != 0:
        raise ProtocError(f"protoc exited {code} compiling {proto_path()}")
    return out_dir / PROTO_FILE.replace(".proto", "_pb2.py")


@functools.cache
def pb2() -> Any:
    """The generated module (``Event``, ``PropertyValue``, ``Envelope``), once per process."""
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None:
        return loaded
    with tempfile.TemporaryDirectory(prefix="collector-proto-") as tmp:
        path = generate(Path(tmp))
        spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        if spec is None or spec.loader is None:
            raise ProtocError(f"cannot import the generated {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # before the directory goes: it is read now
    sys.modules[MODULE_NAME] = module
    return module


__all__ = ["MODULE_NAME", "PROTO_FILE", "PROTO_ROOT", "ProtocError", "generate", "pb2",
           "proto_path"]
