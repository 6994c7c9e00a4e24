"""The ``collector`` command: our own tools beside Faust's CLI (``faust -A collector …``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.cli import deadletter, reprocess
from collector.config import Settings, load_settings_or_exit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = PROJECT_ROOT / "deploy" / "local" / "stack.py"

DESCRIPTION = """collector's own tools beside Faust's CLI (faust -A collector worker): the local
stack, the database, topics, demo events, user profiles, settings, dead letters and
reprocessing. Settings come from COLLECTOR_* variables and the INI file named by
COLLECTOR_CONFIG (see docs/configuration.md)."""


def _stack(args: argparse.Namespace, _settings: Settings) -> int:
    if not STACK_SCRIPT.exists():
        print(f"collector: {STACK_SCRIPT} not found (the stack needs a source checkout)",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("collector_local_stack", STACK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main([args.action]))


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from collector.aggregates.configured import configured_aggregates
    from collector.db import migrate
    from collector.db.tables import SchemaMismatch, ensure_configured_tables

    applied = asyncio.run(migrate(settings))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
    try:
        created = asyncio.run(ensure_configured_tables(settings,
                                                       configured_aggregates(settings)))
    except SchemaMismatch as exc:
        for problem in exc.problems:
            print(f"collector: configured aggregate table: {problem}", file=sys.stderr)
        return 2
    if created:
        print(f"created configured aggregate table(s): {', '.join(created)}")
    return 0


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    from collector.cli.progress import progress_bar
    from collector.db.seed import seed_users

    with progress_bar("seeding users") as report:
        count = asyncio.run(seed_users(settings, args.users, seed=args.seed, progress=report))
    print(f"seeded {count} demo users")
    return 0


def _topics(_args: argparse.Namespace, settings: Settings) -> int:
    from collector.kafka.topics import PartitionMismatch, ensure_topics

    try:
        created = asyncio.run(ensure_topics(settings))
    except PartitionMismatch as exc:
        for mismatch in exc.mismatches:
            print(f"error: {mismatch}", file=sys.stderr)
        return 2
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none (all exist)'}")
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from collector.cli.produce import produce
    from collector.cli.progress import progress_bar
    from collector.devtools.generator import DEFAULT_TYPES, GeneratorConfig

    types = tuple(t for t in args.types.split(",") if t) if args.types else DEFAULT_TYPES
    config = GeneratorConfig(
        events=args.events,
        users=args.users,
        types=types[: args.type_count] if args.type_count else types,
        sources=tuple(settings.kafka.sources),
        malformed_share=args.malformed,
        batch=args.batch,
        seed=args.seed,
        max_message_bytes=settings.ingest.max_message_bytes,
    )
    with progress_bar("producing events", show=not args.json) as report:
        summary = asyncio.run(produce(settings, config, rate=args.rate, progress=report,
                                      report_every=args.report_every,
                                      event_time_ms=args.event_time_ms))
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


def _users_upsert(args: argparse.Namespace, settings: Settings) -> int:
    from collector.enrichment import ProfileCache, UserProfile, UserRepository, upsert_user

    profile = UserProfile(args.user_id, args.segment, args.country, args.plan)

    async def run() -> None:
        repo, cache = UserRepository(settings.mysql), ProfileCache(settings.redis)
        try:
            await upsert_user(repo, cache, profile)
        finally:
            await repo.close()
            await cache.close()

    asyncio.run(run())
    print(f"upserted {profile.user_id}; cache invalidated")
    return 0


def _config_docs(args: argparse.Namespace, _settings: Settings) -> int:
    from collector.config.docs import render

    text = render()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    else:
        print(text)
    return 0


def _config_show(_args: argparse.Namespace, settings: Settings) -> int:
    # SecretStr fields dump as '**********'
    print(settings.model_dump_json(indent=2))
    return 0


def _contract_schema(args: argparse.Namespace, settings: Settings) -> int:
    from collector.models import Limits
    from collector.models.schema import schema_text

    text = schema_text(Limits.from_settings(settings.ingest))
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    else:
        print(text, end="")
    return 0


def _contract_proto(args: argparse.Namespace, _settings: Settings) -> int:
    from collector.models.protogen import generate, proto_path

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {generate(out, pyi=True)}")
    else:
        print(proto_path().read_text(encoding="utf-8"), end="")
    return 0


def _worker(args: argparse.Namespace, _settings: Settings) -> int:
    # the faust beside this interpreter: `.venv/bin/collector worker` works without an
    # activated venv (execvp("faust") looked only on PATH and died with a traceback)
    beside = Path(sys.executable).with_name("faust")
    faust = str(beside) if beside.is_file() else shutil.which("faust")
    if faust is None:
        print(f"collector worker: no faust beside {sys.executable} nor on PATH",
              file=sys.stderr)
        return 2
    extra = list(args.faust_args)
    if extra[:1] == ["--"]:  # argparse keeps the separator that lets options through
        extra = extra[1:]
    argv = [faust, "-A", "collector", "worker", "-l", args.loglevel, *extra]
    os.execv(faust, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collector", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local service stack (Kafka, Redis, MariaDB, InfluxDB)")
    stack.add_argument("action", choices=["up", "down", "status"],
                       help="start (or reuse), stop, or show the services")
    stack.set_defaults(func=_stack)

    db = sub.add_parser("db", help="database schema and demo data")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=_migrate)
    seed = dbsub.add_parser("seed", help="upsert deterministic demo users u00000…")
    seed.add_argument("--users", type=int, default=1000,
                      help="how many users, u00000 upwards (default 1000)")
    seed.add_argument("--seed", type=int, default=7,
                      help="random seed of segments, countries and plans (default 7)")
    seed.set_defaults(func=_seed)

    topics = sub.add_parser("topics", help="create collector's topics")
    topics.add_argument("action", choices=["create"],
                        help="create the missing topics with kafka.partitions partitions")
    topics.set_defaults(func=_topics)

    prod = sub.add_parser("produce", help="write seeded synthetic events to the raw topics")
    prod.add_argument("--events", "-n", type=int, default=1000,
                      help="events to write (default 1000)")
    prod.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    prod.add_argument("--users", type=int, default=1000,
                      help="user ids u00000 … to draw from; match `db seed --users` "
                      "(default 1000)")
    prod.add_argument("--types", default="",
                      help="comma-separated event types (default: page_view, click, "
                      "purchase, sensor, search, add_to_cart)")
    prod.add_argument("--type-count", type=int, default=0, help="use the first K types")
    prod.add_argument("--malformed", type=float, default=0.0,
                      help="share of malformed events, 0 to 1; each is dead-lettered with "
                      "a known reason (default 0)")
    prod.add_argument("--batch", type=int, default=1, help="events per envelope (1: none)")
    prod.add_argument("--seed", type=int, default=42,
                      help="random seed: the same seed writes the same events (default 42)")
    prod.add_argument("--event-time-ms", type=int, default=None, metavar="EPOCH_MS",
                      help="stamp every event within 2 s before this time instead of the "
                      "time it is generated (benchmarks: runs of any size then span the "
                      "same windows)")
    prod.add_argument("--report-every", type=float, default=0.0, metavar="SECONDS",
                      help="also print a JSON progress line to stdout this often (for "
                      "logs, where no bar is drawn; default 0: never)")
    prod.add_argument("--json", action="store_true",
                      help="one-line JSON summary (and no progress bar)")
    prod.set_defaults(func=_produce)

    users = sub.add_parser("users", help="user profiles")
    usub = users.add_subparsers(dest="users_command", required=True)
    up = usub.add_parser("upsert", help="write a profile to MySQL, then invalidate the cache")
    up.add_argument("--user-id", required=True, help="the user's id, e.g. u00042")
    up.add_argument("--segment", required=True, help="segment, e.g. consumer")
    up.add_argument("--country", required=True, help="country code, e.g. DE")
    up.add_argument("--plan", required=True, help="plan, e.g. pro")
    up.set_defaults(func=_users_upsert)

    config = sub.add_parser("config", help="inspect settings")
    csub = config.add_subparsers(dest="config_command", required=True)
    docs = csub.add_parser("docs", help="render docs/configuration.md from the model")
    docs.add_argument("--write", default="", help="write to this path instead of stdout")
    docs.set_defaults(func=_config_docs)
    csub.add_parser("show", help="effective settings, secrets masked").set_defaults(
        func=_config_show
    )

    contract = sub.add_parser("contract", help="the event contract for producers")
    ksub = contract.add_subparsers(dest="contract_command", required=True)
    schema = ksub.add_parser("schema", help="JSON Schema (2020-12) of a raw JSON message")
    schema.add_argument("--write", default="", help="write to this path instead of stdout")
    schema.set_defaults(func=_contract_schema)
    proto = ksub.add_parser("proto", help="the shipped .proto, or its generated Python code")
    proto.add_argument("--out", default="", help="generate Python code into this directory")
    proto.set_defaults(func=_contract_proto)

    deadletter.add_parser(sub)
    reprocess.add_parser(sub)

    worker = sub.add_parser("worker", help="faust -A collector worker -l info")
    worker.add_argument("-l", "--loglevel", default="info",
                        help="log level: debug, info, warning, error (default info)")
    worker.add_argument("faust_args", nargs=argparse.REMAINDER,
                        help="passed on to faust's worker command; options after --, "
                             "e.g. collector worker -- --web-port 6067")
    worker.set_defaults(func=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings_or_exit()
    result: Any = args.func(args, settings)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
