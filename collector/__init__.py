"""collector: Kafka data collection with validation, enrichment, windows and sinks.

``faust -A collector worker`` finds :data:`app` here.  Settings are validated on import
so that a bad value stops the worker (exit status 2) before anything connects.
"""

from collector.app import create_app
from collector.config import load_settings_or_exit

settings = load_settings_or_exit()
app = create_app(settings)

__all__ = ["app", "settings"]
