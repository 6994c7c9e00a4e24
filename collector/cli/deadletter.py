"""``collector deadletter inspect|replay``: triage the dead-letter topic and send fixed
records back to the raw topics (see docs/operations.md, "Replaying dead letters")."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from collector.config import Settings
from collector.models.contract import Reason

#: every dead-letter reason (the protobuf and version ones were missing: not selectable)
REASONS = tuple(reason.value for reason in Reason)


def _selection(args: argparse.Namespace) -> Any:
    from collector.ops.deadletter import Selection
    from collector.ops.times import parse_moment

    return Selection(
        reasons=frozenset(args.reason or ()),
        sources=frozenset(args.source or ()),
        since_ms=parse_moment(args.since) if args.since else None,
        until_ms=parse_moment(args.until) if args.until else None,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
    )


def _fail(message: str) -> int:
    print(f"collector deadletter: {message}", file=sys.stderr)
    return 2


def _inspect(args: argparse.Namespace, settings: Settings) -> int:
    from collector.cli.progress import progress_bar
    from collector.ops.deadletter import inspect

    try:
        selection = _selection(args)
    except ValueError as exc:
        return _fail(str(exc))
    with progress_bar("reading dead letters", show=not args.json) as report:
        result = asyncio.run(inspect(settings, selection, args.samples, report)).as_dict()
    if args.json:
        print(json.dumps(result))
    else:
        _print_inspection(settings, result)
    return 0


def _print_inspection(settings: Settings, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{settings.kafka.deadletter_topic}[/]: {result['matched']} of "
                  f"{result['scanned']} records selected ({result['first']} .. "
                  f"{result['last']}); {result['unreadable']} unreadable")
    for title, counts in (("reason", result["by_reason"]), ("source", result["by_source"]),
                          ("hour (UTC)", result["by_hour"])):
        table = Table(title=f"by {title}", title_justify="left")
        table.add_column(title)
        table.add_column("records", justify="right")
        for name, count in counts.items():
            table.add_row(name, str(count))
        console.print(table)
    for sample in result["samples"]:
        console.print_json(json.dumps(sample))


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from collector.cli.progress import progress_bar
    from collector.ops.deadletter import load_transform, replay

    try:
        selection = _selection(args)
        transform = load_transform(args.transform) if args.transform else None
    except (ValueError, ImportError) as exc:
        return _fail(str(exc))
    if not (selection.reasons or args.all):
        return _fail("name the --reason(s) to replay, or pass --all")
    with progress_bar("replaying" if not args.dry_run else "dry run",
                      show=not args.json) as report:
        summary = asyncio.run(replay(settings, selection, transform=transform,
                                     dry_run=args.dry_run, limit=args.limit,
                                     progress=report))
    print(json.dumps(summary.as_dict(), indent=None if args.json else 2))
    return 0


def _selection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection (all of them must match)")
    group.add_argument("--reason", action="append", choices=REASONS,
                       help="dead-letter reason (repeatable)")
    group.add_argument("--source", action="append",
                       help="event source, e.g. mobile (repeatable)")
    group.add_argument("--since", help="dead-lettered at or after: ISO 8601 (UTC if no "
                       "offset), epoch ms, or an age like 30m, 2h, 1d")
    group.add_argument("--until", help="dead-lettered before (same forms as --since)")
    group.add_argument("--partition", type=int,
                       help="only this partition of the dead-letter topic")
    group.add_argument("--from-offset", type=int,
                       help="first dead-letter offset in --partition (inclusive)")
    group.add_argument("--to-offset", type=int,
                       help="last dead-letter offset in --partition (inclusive)")


def add_parser(sub: Any) -> None:
    """Register ``deadletter inspect`` and ``deadletter replay`` under ``sub``."""
    dl = sub.add_parser("deadletter", help="inspect and replay the dead-letter topic")
    dlsub = dl.add_subparsers(dest="deadletter_command", required=True)

    inspect = dlsub.add_parser(
        "inspect", help="counts by reason, source and hour; sample records")
    _selection_options(inspect)
    inspect.add_argument("--samples", type=int, default=5,
                         help="show this many selected records (default 5)")
    inspect.add_argument("--json", action="store_true", help="one JSON object on stdout")
    inspect.set_defaults(func=_inspect)

    rep = dlsub.add_parser(
        "replay", help="send selected dead letters back to their raw topics",
        description="Produce the selected dead letters' original bytes (or what "
        "--transform makes of them) to their raw topics, with the headers "
        "x-collector-replayed-from and x-collector-replay-id. Replaying twice is "
        "harmless: the windows count an event_id once.")
    _selection_options(rep)
    rep.add_argument("--all", action="store_true",
                     help="replay every reason (without it, --reason is required)")
    rep.add_argument("--transform", metavar="MODULE:FUNCTION",
                     help="fix each record first: f(payload: bytes, record) returns "
                     "bytes, str, a dict/list (sent as JSON) or None (skip); MODULE "
                     "may be a dotted name or a path/to/file.py")
    rep.add_argument("--dry-run", action="store_true",
                     help="select and transform, send nothing; show samples")
    rep.add_argument("--limit", type=int, help="replay at most this many records")
    rep.add_argument("--json", action="store_true", help="one-line JSON summary")
    rep.set_defaults(func=_replay)
