"""collector: Kafka data collection with validation, enrichment, windows and sinks.

``faust -A collector worker`` finds ``app`` here: a lazy attribute, so importing
collector (or any of its modules) has no side effects; the app is built from the
environment's settings on first access (:func:`collector.factory.default_app`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from collector.factory import default_app

        return default_app()
    raise AttributeError(f"module 'collector' has no attribute {name!r}")
