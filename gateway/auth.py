"""Per-platform API keys (gRPC metadata `x-api-key`), stored only as SHA-256 digests.

A key belongs to one platform, or to "*" (operators). A platform's key may ingest and
encode only for its own platform, ask recommendations only from its own catalogue, and read
only its own part of a profile. With no keys configured the gateway runs open (development)
and says so in the log at start-up.

Keys come from settings.api_keys (YAML or environment: fixed for the process's life) and from
settings.api_keys_file, which `KeySource` re-reads on SIGHUP and when the file changes, and
swaps into the Authorizer at once (rotation without a restart). A bad file changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml

from interest_core.errors import PermissionDenied, Unauthenticated

API_KEY_HEADER = "x-api-key"
ANY_PLATFORM = "*"
_DIGEST = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("interest.gateway")


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

    def key_set(self) -> dict[str, str]:
        """A copy of the digest -> platform map served now."""
        return dict(self._digests)

    def replace(self, digests: Mapping[str, str]) -> None:
        """Serve this key set from now on. One assignment, so a call sees the old set or the new
        one, never a mix; calls already past `caller()` are not affected."""
        self._digests = {d.lower(): platform for d, platform in digests.items()}

    def platform_of(self, key: object) -> str | None:
        """The platform of an API key (its value as sent), or None for a missing or unknown key."""
        if not key:
            return None
        digest = key_digest(str(key))
        for known, platform in self._digests.items():  # one snapshot: replace() swaps the dict
            if hmac.compare_digest(known, digest):
                return platform
        return None

    def caller(self, context: grpc.aio.ServicerContext) -> str:
        """The platform the key belongs to ('*' when auth is off or for operator keys)."""
        if not self.enabled:
            return ANY_PLATFORM
        key = sent_key(context.invocation_metadata())
        if not key:
            raise Unauthenticated(f"missing API key: send it as gRPC metadata '{API_KEY_HEADER}'")
        platform = self.platform_of(key)
        if platform is None:
            raise Unauthenticated("unknown API key")
        return platform

    @staticmethod
    def require(caller: str, platform: str) -> None:
        """Raise PermissionDenied unless `caller` (from `caller()`) may act on `platform`."""
        if caller not in (ANY_PLATFORM, platform):
            raise PermissionDenied(f"this API key is scoped to platform {caller!r}, not {platform!r}")


def sent_key(metadata: Iterable[Any] | None) -> str | None:
    """The `x-api-key` value of a call's metadata ((key, value) pairs), None when absent."""
    for item in metadata or ():
        name, value = item
        if name == API_KEY_HEADER:
            return str(value)
    return None


class KeyFileError(ValueError):
    """The keys file cannot be served; the message says what is wrong (never a key)."""


def read_keys_file(path: Path, platforms: Iterable[str]) -> dict[str, str]:
    """digest -> platform from a YAML or JSON mapping; KeyFileError when it cannot be read or
    parsed, is empty, holds something other than SHA-256 hex digests, or names a platform that
    is not served (or "*")."""
    known = {*platforms, ANY_PLATFORM}
    try:
        loaded = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the keys file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise KeyFileError(f"the keys file {path} is not valid YAML or JSON"
                           + (f" (line {where.line + 1})" if where is not None else "")) from None
    if not isinstance(loaded, dict):
        raise KeyFileError(f"the keys file {path} must hold a mapping of SHA-256 key digest -> "
                           f"platform, got {type(loaded).__name__}")
    if not loaded:
        raise KeyFileError(f"the keys file {path} holds no keys")
    out: dict[str, str] = {}
    for n, (digest, platform) in enumerate(loaded.items(), 1):
        digest = str(digest).strip().lower()
        if not _DIGEST.fullmatch(digest):  # never logged: it may be a key pasted by mistake
            raise KeyFileError(f"entry {n} of the keys file {path} is not a SHA-256 hex digest: "
                               f"store `python -m gateway.auth KEY`'s output, never the key itself")
        if platform not in known:
            raise KeyFileError(f"entry {n} of the keys file {path} ({digest[:8]}…) names the unknown "
                               f"platform {platform!r}; known: {', '.join(sorted(known))}")
        out[digest] = str(platform)
    return out


class KeySource:
    """The gateway's key set: settings.api_keys plus the keys file, put into `authorizer` by
    `load()` at creation and by `reload()` on SIGHUP or when `watch()` sees the file change.
    A reload that fails logs why and keeps the keys served so far."""

    def __init__(self, authorizer: Authorizer, static: Mapping[str, str], path: Path | None,
                 platforms: Iterable[str],
                 on_reload: Callable[[str, dict[str, str]], None] | None = None) -> None:
        self.authorizer = authorizer
        self.static = {d.lower(): p for d, p in static.items()}
        self.path = path
        self.platforms = tuple(platforms)
        self.on_reload = on_reload
        self._seen: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat() if self.path is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> dict[str, str]:
        """The static keys and the file's now; KeyFileError when the file cannot be served."""
        if self.path is None:
            return dict(self.static)
        from_file = read_keys_file(self.path, self.platforms)
        clash = sorted(d[:8] for d, p in from_file.items() if self.static.get(d, p) != p)
        if clash:
            raise KeyFileError(f"the keys file {self.path} maps digest(s) {', '.join(clash)}… to "
                               f"another platform than settings.api_keys does")
        return {**self.static, **from_file}

    def load(self) -> dict[str, str]:
        """Read the keys and serve them (start-up: a KeyFileError stops the gateway)."""
        self._seen = self._stat()
        keys = self.keys()
        self.authorizer.replace(keys)
        if self.on_reload is not None:
            self.on_reload("loaded", keys)
        return keys

    def reload(self, reason: str) -> bool:
        """Serve the file's keys now; on any problem keep the old ones. True when replaced."""
        old = self.authorizer.key_set()
        self._seen = self._stat()
        try:
            keys = self.keys()
        except KeyFileError as exc:
            log.error("API keys NOT reloaded (%s): %s; still serving the %d keys loaded before",
                      reason, exc, len(old))
            if self.on_reload is not None:
                self.on_reload("rejected", old)
            return False
        self.authorizer.replace(keys)
        per = Counter(keys.values())
        log.warning("API keys reloaded from %s (%s): %d keys (%s); %d added, %d removed", self.path,
                    reason, len(keys), ", ".join(f"{p} {n}" for p, n in sorted(per.items())),
                    len(keys.keys() - old.keys()), len(old.keys() - keys.keys()))
        if self.on_reload is not None:
            self.on_reload("loaded", keys)
        return True

    async def watch(self, period_s: float = 1.0) -> None:
        """Reload whenever the file's modification time, size or inode changes (an editor's
        save or an atomic rename), checked every `period_s` seconds."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(period_s)
            now = self._stat()
            if now != self._seen:
                if now is None:
                    log.error("the keys file %s is gone; still serving the keys loaded before", self.path)
                    self._seen = None
                    continue
                self.reload("the file changed")


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(key_digest(arg))
