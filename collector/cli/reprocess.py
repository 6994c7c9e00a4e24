"""``collector reprocess --from TIME``: rebuild the aggregates from the raw topics
(see docs/operations.md, "Reprocessing")."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from collector.config import Settings


def _reprocess(args: argparse.Namespace, settings: Settings) -> int:
    from collector.cli.progress import progress_bar
    from collector.ops.reprocess import ReprocessError, plan, reprocess
    from collector.ops.times import iso, parse_moment

    try:
        from_ms = parse_moment(args.from_)
    except ValueError as exc:
        print(f"collector reprocess: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        the_plan = asyncio.run(plan(settings, from_ms, args.app_id or None))
        print(json.dumps({"app_id": the_plan.app_id, "from": iso(the_plan.aligned_ms),
                          "read_from": iso(the_plan.read_from_ms),
                          "partitions": len(the_plan.start),
                          "messages": the_plan.messages}, indent=None if args.json else 2))
        return 0
    try:
        with progress_bar("re-reading raw topics", show=not args.json) as report:
            outcome = asyncio.run(reprocess(settings, from_ms, app_id=args.app_id or None,
                                            timeout_s=args.timeout, keep=args.keep,
                                            progress=report))
    except ReprocessError as exc:
        print(f"collector reprocess: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(outcome.as_dict(), indent=None if args.json else 2))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``reprocess`` under ``sub``."""
    rep = sub.add_parser(
        "reprocess", help="rebuild the aggregates from the raw topics, from a time on",
        description="Run a temporary worker under a new app id (new consumer group, "
        "empty tables) from the raw offsets of --from, until it has read everything "
        "that was in the raw topics when the command started and its windows are "
        "written; then stop it and delete its own topics. Windows starting before "
        "--from (rounded down to a window start) are not written. The running workers "
        "can stay up: rows are absolute values, so both write the same numbers.")
    rep.add_argument("--from", dest="from_", required=True, metavar="TIME",
                     help="rebuild windows from this time on: ISO 8601 (UTC if no "
                     "offset), epoch ms, or an age like 30m, 2h, 1d")
    rep.add_argument("--app-id", default="",
                     help="app id of the temporary worker (default <app.id>-reprocess-"
                     "<UTC time>)")
    rep.add_argument("--timeout", type=float, default=3600.0,
                     help="give up after this many seconds (default 3600)")
    rep.add_argument("--keep", action="store_true",
                     help="keep the temporary worker's topics (for a post-mortem)")
    rep.add_argument("--dry-run", action="store_true",
                     help="print the plan (start, partitions, messages) and stop")
    rep.add_argument("--json", action="store_true", help="one-line JSON summary")
    rep.set_defaults(func=_reprocess)
