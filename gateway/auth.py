"""Per-platform API keys (gRPC metadata `x-api-key`), stored only as SHA-256 digests.

A key belongs to one platform, or to "*" (operators). A platform's key may ingest and
encode only for its own platform, ask recommendations only from its own catalogue, and read
only its own part of a profile. With no keys configured the gateway runs open (development)
and says so in the log at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import grpc

from interest_core.errors import PermissionDenied, Unauthenticated

API_KEY_HEADER = "x-api-key"
ANY_PLATFORM = "*"


def key_digest(key: str) -> str:
    """What the config stores for a key: SHA-256 hex digest (`python -m gateway.auth KEY`)."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authorizer:
    """Resolves the caller's platform from its API key and checks platform scope."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = {d.lower(): platform for d, platform in digests.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def caller(self, context: grpc.aio.ServicerContext) -> str:
        """The platform the key belongs to ('*' when auth is off or for operator keys)."""
        if not self.enabled:
            return ANY_PLATFORM
        metadata = dict(context.invocation_metadata() or ())
        key = metadata.get(API_KEY_HEADER)
        if not key:
            raise Unauthenticated(f"missing API key: send it as gRPC metadata '{API_KEY_HEADER}'")
        digest = key_digest(str(key))
        for known, platform in self._digests.items():
            if hmac.compare_digest(known, digest):
                return platform
        raise Unauthenticated("unknown API key")

    @staticmethod
    def require(caller: str, platform: str) -> None:
        """Raise PermissionDenied unless `caller` (from `caller()`) may act on `platform`."""
        if caller not in (ANY_PLATFORM, platform):
            raise PermissionDenied(f"this API key is scoped to platform {caller!r}, not {platform!r}")


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(key_digest(arg))
