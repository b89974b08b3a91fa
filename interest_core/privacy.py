"""Pseudonymisation: user ids are replaced by a keyed hash before storing or logging."""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    """user id -> HMAC-SHA256(key, user id) as hex; stable for one key, unlinkable without it."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the pseudonymisation key must not be empty")
        self._key = key.encode()

    def __call__(self, user_id: str) -> str:
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
