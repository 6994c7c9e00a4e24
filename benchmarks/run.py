"""``make bench``: throughput, latency and scaling of collector on the local stack.

    python -m benchmarks.run [--n 300000] [--modes single,batch50] [--latency-seconds 60]
                             [--scaling] [--skip-ceiling] [--skip-reference] [--skip-quix]
                             [--quix-groupby repartition|inplace] ...

Environment defaults (so ``BENCH_N=20000 make bench`` works): BENCH_N,
BENCH_LATENCY_SECONDS, BENCH_MODES, BENCH_SCALING (1 to run it), BENCH_SCALING_REPEATS
(runs per size, default 3).  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.ceiling import run_ceiling
from benchmarks.cleanup import drop_runs
from benchmarks.common import (
    ROOT,
    code_version,
    isolated_env,
    load_average,
    machine,
    new_tag,
    one_window_event_time,
    produce,
    run_cli,
    settings_for,
)
from benchmarks.decode import run_decode
from benchmarks.latency import run_latency
from benchmarks.pipeline import (
    PipelineWorker,
    event_stats_count,
    influx_create_db,
    run_quix,
    run_reference,
    warm_cache,
)
from benchmarks.profile import Profiler
from collector.config import Settings

MODES = {"single": 1, "batch50": 50}


def log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(prog="benchmarks.run", description="collector benchmarks")
    p.add_argument("--n", type=int, default=int(env.get("BENCH_N", "300000")),
                   help="events pre-loaded per mode (default 300000)")
    p.add_argument("--modes", default=env.get("BENCH_MODES", "single,batch50"),
                   help="comma-separated: single (one event per message), batch50")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--latency-seconds", type=float,
                   default=float(env.get("BENCH_LATENCY_SECONDS", "60")))
    p.add_argument("--latency-mode", default="single", choices=sorted(MODES))
    p.add_argument("--latency-load", type=float, default=0.5,
                   help="share of the measured max offered in the latency test")
    p.add_argument("--scaling", action="store_true", default=env.get("BENCH_SCALING") == "1",
                   help="also measure the pipeline's per-event cost at --scaling-sizes")
    p.add_argument("--scaling-sizes", default="50000,500000")
    p.add_argument("--scaling-repeats", type=int,
                   default=int(env.get("BENCH_SCALING_REPEATS", "3")),
                   help="runs per size, sizes interleaved; each point is their median "
                   "(one run's CPU/event moved 10-15%% with the machine)")
    p.add_argument("--skip-ceiling", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-quix", action="store_true",
                   help="no Quix Streams peer (benchmarks/quix_app.py)")
    p.add_argument("--quix-groupby", default=env.get("BENCH_QUIX_GROUPBY", "repartition"),
                   choices=("repartition", "inplace"),
                   help="how the Quix peer re-keys to source|type: group_by through a "
                   "repartition topic (Quix's default), or in place (no extra topic)")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--decode-n", type=int, default=int(env.get("BENCH_DECODE_N", "50000")),
                   help="events for the in-process decode cost, JSON against protobuf "
                   "(the protobuf single mode; 0 skips it)")
    p.add_argument("--decode-only", action="store_true",
                   help="only the decode cost: no stack, no workers")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy the pipeline worker for up to SECONDS of its measurement")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--keep-runs", action="store_true",
                   help="keep each run's topics, Influx database and event_stats rows, and "
                   "earlier runs' leftovers (default: dropped, benchmarks/cleanup.py)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="state dirs and worker logs (default .local/bench/<timestamp>)")
    return p.parse_args(argv)


def prepare_stack(users: int) -> None:
    log("stack up, migrate, seed users")
    run_cli(["stack", "up"])
    run_cli(["db", "migrate"])
    run_cli(["db", "seed", "--users", str(users)])


async def run_mode(args: argparse.Namespace, mode: str, n: int, workdir: Path,
                   pipeline_only: bool = False, latency: bool = False) -> dict[str, Any]:
    """One mode's run under a new tag, whose topics, database and rows are dropped at
    its end, however it ends (``--keep-runs`` keeps them)."""
    tag = new_tag()
    try:
        return await _run_mode(args, mode, n, workdir, tag, pipeline_only, latency)
    finally:
        if not args.keep_runs:
            await drop_run(settings_for({}), tag)


async def _run_mode(args: argparse.Namespace, mode: str, n: int, workdir: Path, tag: str,
                    pipeline_only: bool, latency: bool) -> dict[str, Any]:
    batch = MODES[mode]
    workdir = workdir / f"{mode}-{n}-{tag}"
    env = isolated_env(tag, workdir)
    settings = settings_for(env)
    result: dict[str, Any] = {"tag": tag, "batch": batch, "n": n, "workdir": str(workdir)}
    log(f"{mode}: producing {n:,} events (batch {batch}) into {tag}.raw.*")
    summary = produce(env, n, batch, args.users,
                      event_time_ms=one_window_event_time(int(time.time() * 1000)))
    expected = summary["produced"]
    events, messages, valid = expected["events"], expected["messages"], expected["valid"]
    dead = sum(expected["dead_lettered"].values())
    result["produce"] = {"events": events, "messages": messages, "valid": valid,
                         "dead_lettered": dead, "seconds": summary["seconds"],
                         "events_per_second": summary["events_per_second"]}
    log(f"{mode}: produced {events:,} events in {messages:,} messages, "
        f"{summary['events_per_second']:,.0f} events/s")
    errors: list[str] = []
    result["errors"] = errors
    if not pipeline_only and not args.skip_ceiling:
        try:
            result["ceiling"] = await run_ceiling(settings, messages, events)
            log(f"{mode}: ceiling {result['ceiling']['events_per_s']:,.0f} events/s")
        except Exception as exc:  # one broken stage must not lose the others' numbers
            errors.append(f"ceiling: {exc!r}"[:2000])
            log(f"{mode}: ceiling FAILED: {exc!r}"[:500])
    if not pipeline_only and not args.skip_reference:
        try:
            result["reference"] = await run_reference(settings, messages, events, workdir)
            log(f"{mode}: reference {result['reference']['events_per_s']:,.0f} events/s")
        except Exception as exc:
            errors.append(f"reference: {exc!r}"[:2000])
            log(f"{mode}: reference FAILED: {exc!r}"[:500])
    if not pipeline_only and not args.skip_quix:
        try:
            result["quix"] = await run_quix(settings, messages, events, workdir,
                                            groupby=args.quix_groupby)
            log(f"{mode}: quix {result['quix']['events_per_s']:,.0f} events/s, "
                f"{result['quix']['cpu_us_per_event']} µs CPU/event "
                f"(first message {result['quix']['first_message_s']}s after start)")
        except Exception as exc:
            errors.append(f"quix: {exc!r}"[:2000])
            log(f"{mode}: quix FAILED: {exc!r}"[:500])
        shutil.rmtree(workdir / "quix-data", ignore_errors=True)
    if args.skip_pipeline:
        result["ratios"] = report.mode_ratios(result)
        return result
    await influx_create_db(settings)
    warmed = await warm_cache(settings, args.users)
    worker = PipelineWorker(settings, env, workdir / "pipeline.log")
    try:
        ready_s = await worker.start()
        log(f"{mode}: pipeline worker ready in {ready_s:.1f}s (cache warmed: {warmed} users)")
        profiler = None
        if args.profile > 0 and not pipeline_only:
            profiler = Profiler(worker.worker.pid, args.profile, workdir / "profile.raw")
            await profiler.start()
        pipe = await worker.measure(events, valid, dead)
        if profiler is not None:
            result["profile"] = await profiler.finish()
            log(f"{mode}: profile {result['profile'].get('samples', 0)} samples "
                f"{result['profile'].get('note', '')}")
        pipe["ready_s"] = round(ready_s, 2)
        pipe["cache_warmed_users"] = warmed
        result["pipeline"] = pipe
        log(f"{mode}: pipeline {pipe['events_per_s']:,.0f} events/s incl. flush, "
            f"{pipe['consume_only']['events_per_s']:,.0f} consumed/s, "
            f"{pipe['cpu_us_per_event']} µs CPU/event, flush tail {pipe['flush_tail_s']}s")
        extra = pipe["counters"]["unexpected_dead_letters"]
        if extra or not pipe["complete"]:
            log(f"{mode}: WARNING: complete={pipe['complete']}, {extra:,.0f} dead letters "
                "beyond the generator's malformed ones (late?)")
        if latency:
            max_eps = pipe["consume_only"]["events_per_s"]
            rate = max_eps * args.latency_load
            log(f"{mode}: latency: offering {rate:,.0f} events/s for {args.latency_seconds}s")

            async def visible() -> int:
                return await event_stats_count(settings)

            lat = await run_latency(settings, visible, rate, args.latency_seconds,
                                    args.users, batch=batch)
            lat["mode"] = mode
            lat["max_events_per_s"] = max_eps
            lat["load_share"] = args.latency_load
            # the worker's flush cycles so far, by trigger (pipeline run included)
            lat["flushes"] = {k.split(":", 1)[1]: v for k, v in (await worker.metrics()).items()
                              if k.startswith("collector_window_flushes:")}
            result["latency"] = lat
            log(f"{mode}: latency p50 {lat['p50_s']}s p99 {lat['p99_s']}s")
    except Exception as exc:
        errors.append(f"pipeline/latency: {exc!r}"[:2000])
        log(f"{mode}: pipeline FAILED: {exc!r}"[:500])
    finally:
        await worker.stop()
    shutil.rmtree(workdir / "faust", ignore_errors=True)
    shutil.rmtree(workdir / "reference-data", ignore_errors=True)
    result["ratios"] = report.mode_ratios(result)
    return result


async def drop_run(settings: Settings, tag: str | None) -> None:
    """Drop one run's topics, Influx database and rows (None: every earlier run's, which
    assumes no other bench uses this stack now); a failure is logged, not raised."""
    what = tag or "earlier runs' leftovers"
    try:
        dropped = await drop_runs(settings, None if tag is None else {tag})
        log(f"dropped {what}: {dropped}")
    except Exception as exc:
        log(f"dropping {what} FAILED (the next bench retries): {exc!r}"[:500])


#: what a scaling point reports: the median of its runs'
SCALING_MEDIANS = ("events_per_s", "cpu_us_per_event", "consume_only_cpu_us_per_event",
                   "peak_rss_mb")


def scaling_run(res: dict[str, Any]) -> dict[str, Any]:
    pipe = res["pipeline"]
    return {"events_per_s": pipe["events_per_s"], "cpu_us_per_event": pipe["cpu_us_per_event"],
            "consume_only_cpu_us_per_event": pipe["consume_only"]["cpu_us_per_event"],
            "peak_rss_mb": pipe["peak_rss_mb"], "tag": res["tag"],
            "complete": pipe["complete"],
            "unexpected_dead_letters": pipe["counters"]["unexpected_dead_letters"]}


def scaling_point(size: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size: the median of each measure over its runs, every run kept beside it."""
    point: dict[str, Any] = {"n": size}
    for key in SCALING_MEDIANS:
        point[key] = round(statistics.median(run[key] for run in runs), 2)
    point["complete"] = all(run["complete"] for run in runs)
    point["unexpected_dead_letters"] = max(run["unexpected_dead_letters"] for run in runs)
    point["runs"] = runs
    return point


def change_pct(points: list[dict[str, Any]], key: str) -> float | None:
    first, last = points[0][key], points[-1][key]
    return round((last - first) / first * 100, 1) if first else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = args.workdir or ROOT / ".local" / "bench" / stamp
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(),
        "params": {"n": args.n, "users": args.users, "modes": args.modes,
                   "quix_groupby": None if args.skip_quix else args.quix_groupby,
                   "latency_seconds": args.latency_seconds, "latency_load": args.latency_load,
                   "scaling": args.scaling, "workdir": str(workdir)},
        "modes": {},
    }
    if args.decode_n > 0:
        log(f"decode: JSON against protobuf, {args.decode_n:,} events per shape")
        results["decode"] = run_decode(args.decode_n, args.users)
        log(f"decode: {results['decode']['us_per_event']}")
    if args.decode_only:
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return results
    prepare_stack(args.users)
    results["params"]["partitions"] = settings_for({}).kafka.partitions
    if not args.keep_runs:  # every run finds the stack as clean as the first
        await drop_run(settings_for({}), None)
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        want_latency = not args.skip_latency and mode == args.latency_mode
        res = await run_mode(args, mode, args.n, workdir, latency=want_latency)
        if "latency" in res:
            results["latency"] = res.pop("latency")
        results["modes"][mode] = res
    if args.scaling and not args.skip_pipeline:
        sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
        runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
        for _ in range(max(1, args.scaling_repeats)):  # interleaved: drift hits all sizes
            for size in sizes:
                res = await run_mode(args, "single", size, workdir, pipeline_only=True)
                if "pipeline" not in res:
                    results.setdefault("errors", []).extend(res["errors"])
                    continue
                runs[size].append(scaling_run(res))
                log(f"scaling N={size:,}: {res['pipeline']['cpu_us_per_event']} µs CPU/event")
        points = [scaling_point(size, runs[size]) for size in sizes if runs[size]]
        results["scaling"] = {} if not points else {
            "points": points,
            "cpu_change_pct": change_pct(points, "cpu_us_per_event"),
            "consume_only_cpu_change_pct": change_pct(points, "consume_only_cpu_us_per_event"),
        }
    results["targets"] = report.targets(results)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load_at_end"] = load_average()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    results = asyncio.run(main_async(args))
    results["wall_seconds"] = round(time.monotonic() - t0, 1)
    if args.decode_only:  # a quick look: neither results/ nor the docs are rewritten
        print(report.render(results))
        return 0
    path = report.write_json(results)
    print()
    print(report.render(results))
    print(f"\nresults: {path} (and {path.parent / 'latest.json'}); "
          f"load at start {results['machine']['load_at_start']}, end {results['load_at_end']}")
    if not args.no_docs and not report.update_docs(results):
        print("docs/benchmarks.md has no results markers; not updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
