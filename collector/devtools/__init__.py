"""Development tools: the demo event generator."""
