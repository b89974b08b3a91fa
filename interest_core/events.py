"""The unified behaviour event every platform adapter produces."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class UnifiedEvent(BaseModel):
    """One platform event after adaptation, cleaning and pseudonymisation (never stored)."""

    model_config = ConfigDict(frozen=True)

    platform: str
    user_key: str = Field(description="HMAC-SHA256 of the user id, hex")
    item_id: str = Field(description="platform item id; '' when the event names only text")
    text: str = Field(min_length=1, description="cleaned, PII-scrubbed behaviour text")
    event_type: str
    order: int = Field(description="timestamp (ms) or position; orders a user's events")
