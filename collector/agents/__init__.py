"""The Faust agents, timers and the per-worker runtime they share."""
