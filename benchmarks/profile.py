"""Optional py-spy profile of the pipeline worker (``--profile``), summarized for the JSON.

py-spy is a dev tool, not a dependency: ``.venv/bin/pip install py-spy``.  Without it the
profile is skipped with a note.  Sampling uses ``--nonblocking`` (the worker is never
paused), so a share of samples may fail; shares are of the samples taken.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import BIN

PY_SPY = BIN / "py-spy"
_LINE = re.compile(r":\d+\)$")

#: substrings of a stack -> the cost group they stand for (a stack can be in several)
GROUPS = {
    "collector raw agent (validate, enrich, aggregate, forward)": "RawProcessor.process ",
    "aggregator (window state)": "Aggregator.apply",
    "table writes -> changelog": "send_changelog",
    "rocksdb store": "faust/stores/rocksdb",
    "aiokafka producer": "aiokafka/producer",
    "faust consumer hand-off (_drain_messages)": "_drain_messages",
    "mode Service.wait_first": "Service.wait_first",
    "faust sensors / monitor": "faust/sensors",
    "prometheus_client": "prometheus_client",
    "collector.observability": "collector/observability",
    "FaustState partition context": "FaustState._partition",
    "enrichment": "RawProcessor._enrich",
    "flush timer (combiner + merge tick)": "Flusher.tick",
    "merge agent": "merge_partials",
    "sinks": "collector/sinks",
    "redis client": "redis/",
}


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame)


def summarize_raw(text: str, top: int = 15) -> dict[str, Any]:
    """Top self frames, top inclusive frames and cost groups of py-spy ``--format raw``."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        for name, needle in GROUPS.items():
            if needle in stack:
                groups[name] += n

    def shares(counter: Counter[str], k: int) -> list[list[Any]]:
        return [[round(v / total * 100, 1), name] for name, v in counter.most_common(k)]

    if not total:
        return {"samples": 0}
    return {"samples": total, "self_pct": shares(own, top),
            "inclusive_pct": shares(incl, 3 * top), "groups_pct": shares(groups, len(GROUPS))}


class Profiler:
    """``py-spy record`` of one pid for at most ``seconds``, stopped early by ``finish``."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100) -> None:
        self.pid, self.seconds, self.out, self.rate = pid, seconds, out, rate
        self.proc: asyncio.subprocess.Process | None = None
        self.note = ""

    async def start(self) -> None:
        if not PY_SPY.exists():
            self.note = f"py-spy not installed at {PY_SPY}; profile skipped"
            return
        self.proc = await asyncio.create_subprocess_exec(
            str(PY_SPY), "record", "-p", str(self.pid), "-d", str(int(self.seconds)),
            "-r", str(self.rate), "-f", "raw", "-o", str(self.out),
            *([] if os.environ.get("BENCH_PROFILE_BLOCKING") == "1" else ["--nonblocking"]),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )

    async def finish(self) -> dict[str, Any]:
        if self.proc is None:
            return {"note": self.note}
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        except TimeoutError:
            self.proc.kill()
            return {"note": "py-spy did not stop"}
        if not self.out.exists():
            return {"note": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
        summary = summarize_raw(self.out.read_text())
        summary["raw_file"] = str(self.out)
        return summary
