"""Enrichment sources: MySQL ``users`` (truth), Redis (cache), and the enricher over both."""

from collector.enrichment.cache import NEGATIVE, NEGATIVE_MARKER, Negative, ProfileCache
from collector.enrichment.enricher import (
    CacheLike,
    Circuit,
    Enricher,
    Invalidator,
    Outcome,
    RepositoryLike,
    upsert_user,
)
from collector.enrichment.errors import CacheUnavailable, SourceError, SourceUnavailable
from collector.enrichment.users import UNKNOWN_PROFILE, UserProfile, UserRepository, mysql_errors

__all__ = [
    "NEGATIVE",
    "NEGATIVE_MARKER",
    "UNKNOWN_PROFILE",
    "CacheLike",
    "CacheUnavailable",
    "Circuit",
    "Enricher",
    "Invalidator",
    "Negative",
    "Outcome",
    "ProfileCache",
    "RepositoryLike",
    "SourceError",
    "SourceUnavailable",
    "UserProfile",
    "UserRepository",
    "mysql_errors",
    "upsert_user",
]
