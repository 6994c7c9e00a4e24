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
