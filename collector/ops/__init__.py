"""Operator tools behind the ``collector`` CLI: dead-letter inspection and replay,
reprocessing.  Plain aiokafka, no Faust app: they run beside the workers."""
