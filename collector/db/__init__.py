"""MySQL schema management: packaged migrations and demo data."""

from collector.db.migrate import LOCK_NAME, Migration, connect, load_migrations, migrate
from collector.db.seed import demo_user_id, demo_users, seed_users

__all__ = [
    "LOCK_NAME",
    "Migration",
    "connect",
    "demo_user_id",
    "demo_users",
    "load_migrations",
    "migrate",
    "seed_users",
]
