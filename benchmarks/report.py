"""Pure reporting: statistics, the results table, the JSON files and the docs section."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of ``values`` (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p99 and max, rounded to milliseconds."""
    if not values:
        return {"count": 0, "mean": math.nan, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def times(value: float | None) -> str | None:
    """A ratio for the table: ``2.31x``, ``0.012x``."""
    if value is None:
        return None
    return f"{value:.2f}x" if value >= 0.995 else f"{value:.3f}x"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, str):
        return value.endswith("x") and value[:-1].replace(".", "", 1).isdigit()
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (also readable in a terminal), numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


THROUGHPUT_HEADERS = ("mode", "stage", "events/s", "µs CPU/event", "peak RSS MB",
                      "vs ceiling", "vs reference", "vs quix", "µs/event vs quix",
                      "flush tail s", "seconds")


def mode_ratios(res: dict[str, Any]) -> dict[str, float | None]:
    """collector / peer for one mode: events/s (higher is better for collector) and
    µs CPU per event (lower is better), incl. flush and consumed-only."""
    pipe = res.get("pipeline") or {}
    consumed = pipe.get("consume_only") or {}
    ref = res.get("reference") or {}
    quix = res.get("quix") or {}
    return {
        "pipeline_vs_reference_events_per_s": ratio(pipe.get("events_per_s"),
                                                     ref.get("events_per_s")),
        "pipeline_vs_reference_cpu_us_per_event": ratio(pipe.get("cpu_us_per_event"),
                                                        ref.get("cpu_us_per_event")),
        "pipeline_vs_quix_events_per_s": ratio(pipe.get("events_per_s"),
                                               quix.get("events_per_s")),
        "pipeline_vs_quix_cpu_us_per_event": ratio(pipe.get("cpu_us_per_event"),
                                                   quix.get("cpu_us_per_event")),
        "consumed_vs_quix_events_per_s": ratio(consumed.get("events_per_s"),
                                               quix.get("events_per_s")),
        "consumed_vs_quix_cpu_us_per_event": ratio(consumed.get("cpu_us_per_event"),
                                                   quix.get("cpu_us_per_event")),
    }


def throughput_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for mode, res in results.get("modes", {}).items():
        ceiling = (res.get("ceiling") or {}).get("events_per_s")
        reference = (res.get("reference") or {}).get("events_per_s")
        quix = res.get("quix") or {}
        produce = res.get("produce") or {}
        if produce:
            rows.append([mode, "produce (collector produce)", produce.get("events_per_second"),
                         None, None, None, None, None, None, None, produce.get("seconds")])
        for stage in ("ceiling", "reference", "quix", "pipeline"):
            r = res.get(stage)
            if not r:
                continue
            eps, cpu = r.get("events_per_s"), r.get("cpu_us_per_event")
            ours = stage == "pipeline"
            label = f"quix ({r.get('groupby', 'repartition')})" if stage == "quix" else stage
            rows.append([mode, label, eps, cpu, r.get("peak_rss_mb"),
                         times(ratio(eps, ceiling)) if stage != "ceiling" else None,
                         times(ratio(eps, reference)) if ours else None,
                         times(ratio(eps, quix.get("events_per_s"))) if ours else None,
                         times(ratio(cpu, quix.get("cpu_us_per_event"))) if ours else None,
                         r.get("flush_tail_s") if ours else None,
                         r.get("seconds")])
            if ours and r.get("consume_only"):
                c = r["consume_only"]
                rows.append([mode, "pipeline (consumed, not yet flushed)",
                             c.get("events_per_s"), c.get("cpu_us_per_event"), None,
                             times(ratio(c.get("events_per_s"), ceiling)),
                             times(ratio(c.get("events_per_s"), reference)),
                             times(ratio(c.get("events_per_s"), quix.get("events_per_s"))),
                             times(ratio(c.get("cpu_us_per_event"),
                                         quix.get("cpu_us_per_event"))),
                             None, c.get("seconds")])
    return rows


def render(results: dict[str, Any]) -> str:
    """The human report: throughput table, latency, scaling, targets."""
    rows = throughput_rows(results)
    out = [format_table(THROUGHPUT_HEADERS, rows)] if rows or not results.get("decode") else []
    lat = results.get("latency")
    if lat:
        out.append("")
        out.append(format_table(
            ("latency mode", "offered ev/s", "sent ev/s", "seconds", "p50 s", "p99 s", "max s",
             "not visible", "flush interval s"),
            [[lat.get("mode"), lat["offered_events_per_s"], lat["achieved_send_events_per_s"],
              lat["seconds"], lat["p50_s"], lat["p99_s"], lat["max_s"], lat["not_visible"],
              lat["flush_interval_s"]]]))
    decode = results.get("decode")
    if decode:
        out.extend([""] if out else [])
        out.append(format_table(("decode (in process, best of runs)", "µs/event"),
                                [[name, us] for name, us in decode["us_per_event"].items()]))
    scaling = results.get("scaling")
    if scaling:
        out.append("")
        out.append(format_table(
            ("scaling N", "events/s", "µs CPU/event", "µs CPU/event (consume only)",
             "peak RSS MB", "runs: µs CPU/event, peak RSS MB"),
            [[p["n"], p["events_per_s"], p["cpu_us_per_event"],
              p.get("consume_only_cpu_us_per_event"), p["peak_rss_mb"],
              "; ".join(f"{r['cpu_us_per_event']:g}, {r['peak_rss_mb']:g}"
                        for r in p.get("runs", []))]
             for p in scaling["points"]]))
        out.append(f"per-event CPU change smallest->largest N: "
                   f"{_fmt(scaling.get('cpu_change_pct'))}% incl. flush, "
                   f"{_fmt(scaling.get('consume_only_cpu_change_pct'))}% consume only")
    for mode, res in results.get("modes", {}).items():
        prof = res.get("profile") or {}
        if prof.get("samples"):
            out.append("")
            out.append(format_table(
                (f"{mode}: py-spy cost group ({prof['samples']} samples)", "% of samples"),
                [[name, pct] for pct, name in prof["groups_pct"]]))
            out.append(format_table(("top self frames", "% of samples"),
                                    [[name[:90], pct] for pct, name in prof["self_pct"][:10]]))
        elif prof.get("note"):
            out.append(f"{mode}: {prof['note']}")
    notes = warnings(results)
    if notes:
        out.append("")
        out.extend(f"WARNING: {note}" for note in notes)
    targets = results.get("targets")
    if targets:
        out.append("")
        out.append(format_table(("target", "goal", "measured", "met"),
                                [[t["name"], t["goal"], t["measured"], t["met"]]
                                 for t in targets]))
    return "\n".join(out)


def warnings(results: dict[str, Any]) -> list[str]:
    """Failed stages, incomplete runs and dead letters the generator did not plan."""
    notes = [str(e) for e in results.get("errors", [])]
    runs = [(mode, res) for mode, res in results.get("modes", {}).items()]
    runs += [(f"scaling N={p['n']:,}", {"pipeline": {"complete": p.get("complete", True),
                                                      "counters": p}})
             for p in (results.get("scaling") or {}).get("points", [])]
    for mode, res in runs:
        notes += [f"{mode}: {e}" for e in res.get("errors", [])]
        pipe = res.get("pipeline") or {}
        if pipe and not pipe.get("complete", True):
            notes.append(f"{mode}: pipeline never showed every event in MySQL (stalled)")
        extra = (pipe.get("counters") or {}).get("unexpected_dead_letters") or 0
        if extra:
            notes.append(f"{mode}: {extra:,.0f} events dead-lettered beyond the generator's "
                         "malformed ones (late: see docs/benchmarks.md, Findings)")
    return notes


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against this run (goals, not assertions)."""
    found: list[dict[str, Any]] = []
    single = results.get("modes", {}).get("single", {})
    ratio_ref = ratio((single.get("pipeline") or {}).get("events_per_s"),
                      (single.get("reference") or {}).get("events_per_s"))
    if ratio_ref is not None:
        found.append({"name": "single: pipeline / reference", "goal": ">= 2.0",
                      "measured": ratio_ref, "met": ratio_ref >= 2.0})
    quix = mode_ratios(single)
    eps_quix = quix["pipeline_vs_quix_events_per_s"]
    if eps_quix is not None:
        found.append({"name": "single: pipeline / quix events/s", "goal": ">= 1.0",
                      "measured": eps_quix, "met": eps_quix >= 1.0})
    cpu_quix = quix["pipeline_vs_quix_cpu_us_per_event"]
    if cpu_quix is not None:
        found.append({"name": "single: pipeline / quix µs CPU/event", "goal": "<= 1.0",
                      "measured": cpu_quix, "met": cpu_quix <= 1.0})
    for mode, res in results.get("modes", {}).items():
        pipe = res.get("pipeline") or {}
        if pipe.get("flush_tail_s") is not None and pipe.get("flush_interval_s"):
            goal = pipe["flush_interval_s"]
            found.append({"name": f"{mode}: flush tail (s)", "goal": f"<= {goal:g}",
                          "measured": pipe["flush_tail_s"],
                          "met": pipe["flush_tail_s"] <= goal})
    batch = results.get("modes", {}).get("batch50", {})
    eps = (batch.get("pipeline") or {}).get("events_per_s")
    if eps is not None:
        found.append({"name": "batch50: pipeline events/s", "goal": ">= 60,000",
                      "measured": eps, "met": eps >= 60_000})  # issue 17 (was 40,000)
    lat = results.get("latency")
    if lat and not math.isnan(lat["p99_s"]):
        goal = 2 * lat["flush_interval_s"]
        found.append({"name": "latency p99 at 50% load (s)", "goal": f"< {goal:g}",
                      "measured": lat["p99_s"], "met": lat["p99_s"] < goal})
    scaling = results.get("scaling")
    if scaling and scaling.get("cpu_change_pct") is not None:
        change = scaling["cpu_change_pct"]
        sizes = "->".join(f"{p['n'] // 1000}k" for p in scaling.get("points", []))
        found.append({"name": f"scaling: CPU/event change {sizes} (%)", "goal": "within 10",
                      "measured": change, "met": abs(change) <= 10})
    points = (scaling or {}).get("points") or []
    if len(points) >= 2 and points[0].get("peak_rss_mb") and points[-1].get("peak_rss_mb"):
        grew = 100 * (points[-1]["peak_rss_mb"] / points[0]["peak_rss_mb"] - 1)
        sizes = "->".join(f"{p['n'] // 1000}k" for p in points)
        found.append({"name": f"scaling: peak RSS change {sizes} (%)", "goal": "within 20",
                      "measured": round(grew, 1), "met": abs(grew) <= 20})  # issue 17, part 5
    return found


def write_json(results: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, sort_keys=False, default=str)
    path = directory / f"{stamp}.json"
    path.write_text(text + "\n")
    (directory / "latest.json").write_text(text + "\n")
    return path


def docs_section(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    params = results.get("params", {})
    code = results.get("code", {})
    lines = [
        BEGIN,
        f"Last run: {results.get('finished_at', '?')} — N = {_fmt(params.get('n'))} events, "
        f"{_fmt(params.get('users'))} users, 6 types, 1% malformed, "
        f"{_fmt(params.get('partitions'))} partitions per raw topic; latency test "
        f"{_fmt(params.get('latency_seconds'))} s at {_fmt(params.get('latency_load'))} of the "
        "measured consume rate.",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM, "
        f"Python {m.get('python')}, Linux {m.get('kernel')}; {m.get('broker')}; {versions}.",
        f"Load average (1/5/15 min) at start {m.get('load_at_start')}, "
        f"at end {results.get('load_at_end')}. The machine is shared: treat the numbers "
        "as indicative unless the load was near zero.",
        f"Code: commit {code.get('commit', '?')}"
        + (f", with uncommitted changes in {', '.join(code['uncommitted_collector_files'])}"
           if code.get("uncommitted_collector_files") else "") + ".",
        "",
        render(results),
        END,
    ]
    return "\n".join(lines)


def update_docs(results: dict[str, Any], path: Path = DOCS) -> bool:
    """Replace the results section of docs/benchmarks.md; False if the markers are missing."""
    if not path.exists():
        return False
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + docs_section(results) + tail)
    return True
