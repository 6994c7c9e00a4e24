"""The profile-update message on the users topic."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_ID = r"^[A-Za-z0-9_.:@-]{1,64}$"


class ProfileUpdate(BaseModel):
    """A user profile change; MySQL ``users`` is the source of truth."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(pattern=_ID)
    segment: str = Field(min_length=1, max_length=64)
    country: str = Field(min_length=1, max_length=8)
    plan: str = Field(min_length=1, max_length=32)
