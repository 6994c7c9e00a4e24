#!/usr/bin/env bash
# Start a paced demo producer in the background and the worker in the foreground.
# Ctrl-C (SIGINT) stops the worker cleanly; the trap stops the producer with it.
set -uo pipefail
BIN=${1:-.venv/bin}
USERS=${2:-1000}
RATE=${3:-200}
"$BIN/collector" produce --events 100000000 --rate "$RATE" --users "$USERS" \
  --malformed 0.01 --batch 1 --report-every 10 --json > .local/demo-producer.log 2>&1 &
PRODUCER=$!
trap 'kill $PRODUCER 2>/dev/null; wait $PRODUCER 2>/dev/null' EXIT
cat <<TXT
== collector demo ==
  worker web:      http://127.0.0.1:16066/   (metrics: /metrics)
  demo producer:   $RATE events/s, 1% malformed  (log: .local/demo-producer.log, a line every 10 s)
  dead letters:    topic collect.deadletter; enriched events: topic collect.enriched
  stop:            Ctrl-C (then 'make down' to stop the services)
TXT
"$BIN/faust" -A collector worker -l info
