"""Driver-neutral errors raised by the enrichment sources.

Adapters translate driver exceptions at their boundary, so callers decide *what to do*
(retry later, fall back, give up) from two kinds of failure instead of a dozen driver
types: ``SourceUnavailable`` may go away by itself, plain ``SourceError`` will not.
"""

from __future__ import annotations


class SourceError(Exception):
    """A source failed in a way retrying will not fix (bad SQL, bad credentials, bad data)."""


class SourceUnavailable(SourceError):
    """The source could not answer right now (refused, lost, timed out): retryable."""


class CacheUnavailable(SourceUnavailable):
    """The profile cache could not answer: read the source of truth instead."""


__all__ = ["CacheUnavailable", "SourceError", "SourceUnavailable"]
