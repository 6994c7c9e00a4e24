"""``collector --help`` reads as plain text and every option says what it does."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from collector.cli.main import build_parser


def parsers(parser: argparse.ArgumentParser, name: str = "collector"
            ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_and_argument_has_help() -> None:
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, parser in parsers(build_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
               and not action.help]
    assert not missing, missing


def test_help_has_no_rest_markup() -> None:
    for name, parser in parsers(build_parser()):
        text = parser.format_help()
        assert "``" not in text, name
    assert "deadletter" in build_parser().format_help()


def test_worker_runs_the_faust_beside_it_without_an_activated_venv() -> None:
    """``.venv/bin/collector worker`` with the venv not on PATH (as README's commands run
    it) must find the venv's faust; it died with FileNotFoundError. ``--help`` after
    ``--`` goes to faust's worker command, which prints it and exits."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "collector.cli.main", "worker", "--", "--help"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Start worker instance" in proc.stdout, proc.stdout[-2000:]
