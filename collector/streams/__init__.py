"""Faust agents: validation, enrichment, aggregation."""
