"""Metrics, created against a registry that is passed in (like faust's prometheus sensor)."""

from collector.observability.metrics import Metrics

__all__ = ["Metrics"]
