"""The one error settings loading raises."""

from __future__ import annotations


class SettingsError(Exception):
    """Invalid configuration: every problem found, one per line, no secret values."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = ["collector: invalid configuration:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)
