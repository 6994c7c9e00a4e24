"""The CLI's progress bar: drawn on a terminal only, so pipes and CI get clean output."""

from __future__ import annotations

import io

import pytest

from collector.cli.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with progress_bar("replaying") as report:
        report(0, 0)  # total not known yet
        report(7, 10)
    assert "replaying" in screen.getvalue() and "7/10" in screen.getvalue()


def test_nothing_is_drawn_into_a_pipe_or_when_not_wanted(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, screen = io.StringIO(), Terminal()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress_bar("replaying") as report:
        report(7, 10)
    monkeypatch.setattr("sys.stderr", screen)
    with progress_bar("replaying", show=False) as report:
        report(7, 10)
    assert pipe.getvalue() == "" and screen.getvalue() == ""
