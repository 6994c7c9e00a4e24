"""Kafka transport adjustments for Faust (imports nothing else of collector)."""
