"""Settings for the whole system (a leaf package: it imports nothing else of collector)."""

from collector.config.errors import SettingsError
from collector.config.loader import (
    env_name,
    load_settings,
    load_settings_or_exit,
    settings_for_env,
)
from collector.config.settings import (
    AppSettings,
    InfluxSettings,
    IngestSettings,
    KafkaSettings,
    MySQLSettings,
    RedisSettings,
    Settings,
    SinkSettings,
    WebSettings,
    WindowSettings,
)

__all__ = [
    "AppSettings",
    "InfluxSettings",
    "IngestSettings",
    "KafkaSettings",
    "MySQLSettings",
    "RedisSettings",
    "Settings",
    "SettingsError",
    "SinkSettings",
    "WebSettings",
    "WindowSettings",
    "env_name",
    "load_settings",
    "load_settings_or_exit",
    "settings_for_env",
]
