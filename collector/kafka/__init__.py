"""Kafka clients for our own tools (the worker goes through Faust) and topic admin."""
