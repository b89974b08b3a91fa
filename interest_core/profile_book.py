"""Users' stored profiles as the serving process reads and changes them: one user at a time
within a process (per-user lock stripes), every commit on the writer thread(s), and profiles
of an older model re-embedded for the served one before anyone uses them.

Correctness across processes (several gateways on one PostgreSQL store, or on one SQLite
file) does not rest on the lock stripes: ingest adds its events to the row as it is at commit
time, inside one transaction with row locks (ProfileStore.add_events_many), and a re-embedded
vector is written only if the row is still the one that was read (ProfileStore.reembed).
Nothing read from the store is kept beyond the call that read it, so a DeleteUser or a
consent change made through another gateway holds for the next call here.

The embedding call and the stage timer come in as callables, so this stays free of gRPC,
Triton and Prometheus: `embed(texts, rpc, platform, timeout)` returns float32 [n, D].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np

from interest_core.consent import ConsentRule, ConsentScope, consent_scope, erasure_scope, require_operator
from interest_core.errors import InvalidInput, Unavailable
from interest_core.events import UnifiedEvent
from interest_core.profiles import AuditEntry, Profile, ProfileDelta, ProfileStore

log = logging.getLogger("interest.gateway")
# A user's profiles are read, changed and written back under one of these locks (by key
# hash): within a process, a call for a user waits for the one before it (a read sees the
# update in flight, a delete comes after it). Across processes the store's transactions
# keep updates whole.
USER_LOCKS = 1024
STALE_TRIES = 3  # ingest: re-embed and add again, when another gateway changed a stale row meanwhile
MAX_AUDIT_ENTRIES = 1000  # per ListAudit call
T = TypeVar("T")

Embed = Callable[[Sequence[str], str, str, float], Awaitable[np.ndarray]]
CatalogueText = Callable[[str], "str | None"]  # a catalogue item's text; None if not in it


class StageTimer(Protocol):
    """Times a block as one stage of an RPC for one platform (GatewayMetrics.stage)."""

    def __call__(self, stage: str, rpc: str, platform: str) -> contextlib.AbstractContextManager[None]: ...


def lock_stripe(user_key: str) -> int:
    """The user lock of a pseudonymous key: the same in every process (unlike hash())."""
    return zlib.crc32(user_key.encode()) % USER_LOCKS


class ProfileBook:
    """The profiles of the platforms served here (`catalogue_text` names them), in `store`.

    `model_version` is the served model's (set once it is known; '' until then)."""

    def __init__(self, store: ProfileStore, embed: Embed, catalogue_text: Mapping[str, CatalogueText],
                 dim: int, timer: StageTimer,
                 on_reembedded: Callable[[str, str], None] = lambda platform, outcome: None) -> None:
        self.store = store
        self.embed = embed
        self.catalogue_text = catalogue_text
        self.dim = dim
        self.timer = timer
        self.on_reembedded = on_reembedded  # (platform, 'rebuilt' | 'emptied') per profile
        self.model_version = ""
        # Every store write commits (an fsync) on the writer thread(s), off the event loop: a
        # slow disk then holds up only the calls that write, not every call in flight. SQLite
        # has one writer thread, and its reads run on the loop, on the store's own read
        # connection (WAL: they never wait for a commit). A remote store (PostgreSQL) has a
        # thread per pooled connection, and its reads run on threads too.
        self._writer = ThreadPoolExecutor(max_workers=store.writers, thread_name_prefix="profile-writer")
        self._readers = (ThreadPoolExecutor(max_workers=store.writers, thread_name_prefix="profile-reader")
                         if store.remote else None)
        self._user_locks = [asyncio.Lock() for _ in range(USER_LOCKS)]

    def close(self) -> None:
        """Finish the queued store writes, then close the store."""
        self._writer.shutdown(wait=True)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self.store.close()

    # --- the operations of the RPCs ---
    async def ingest(self, platform: str, events: Sequence[UnifiedEvent], rpc: str,
                     time_left: Callable[[], float]) -> set[str]:
        """Embed the events and add them to each user's profile: one transaction for the batch,
        applied to the rows as they are at commit time (other gateways' updates included), under
        the users' locks. A profile of an older model is re-embedded first. Returns the users
        updated. `time_left()`: seconds left for a model call, asked anew before each step."""
        vectors = await self.embed([e.text for e in events], rpc, platform, time_left())
        timeout = time_left()
        by_user: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_user[event.user_key].append(i)
        deltas = []
        for user_key, rows in by_user.items():
            vec_sum = np.zeros(vectors.shape[1], dtype=np.float32)
            items: list[str] = []
            for i in sorted(rows, key=lambda r: events[r].order):
                vec_sum += vectors[i].astype(np.float32)
                if events[i].item_id and events[i].item_id not in items:
                    items.append(events[i].item_id)
            deltas.append(ProfileDelta(user_key, platform, vec_sum, len(rows), items))
        async with self.locked(by_user):
            for _ in range(STALE_TRIES):
                stale = await self.write(rpc, platform, self.store.add_events_many, deltas,
                                         self.model_version)
                if not stale:
                    return set(by_user)
                for user_key, _platform in stale:  # brought to the served model, then added again
                    profile = (await self.load(user_key)).get(platform)
                    if profile is not None:
                        await self.current(user_key, {platform: profile}, rpc, timeout)
        raise Unavailable("the user's profile is being re-embedded for another model version by "
                          "another gateway; retry shortly")

    async def read(self, user_key: str, rpc: str, time_left: Callable[[], float],
                   only: str | None = None) -> dict[str, Profile]:
        """The user's profiles in the served model's space (only the `only` platform's when
        given), under the user's lock; {} when there are none."""
        async with self.locked([user_key]):
            profiles = await self.load(user_key)
            if only is not None:
                profiles = {p: prof for p, prof in profiles.items() if p == only}
            return await self.current(user_key, profiles, rpc, time_left()) if profiles else {}

    async def set_consent(self, user_key: str, caller: str, source: str, targets: Sequence[str],
                          allowed: bool) -> ConsentScope:
        """Set the user's consent to migrate `source`'s data ('' the caller's own) to `targets`
        ([] every other platform), if the caller may (consent.consent_scope); audited. Its
        store metrics carry the platform that asked ('*': an operator)."""
        scope = consent_scope(caller, source, targets, self.catalogue_text)
        await self.write("SetConsent", caller, self.store.set_consent, user_key, allowed,
                         scope.source, scope.targets, caller)
        return scope

    async def delete(self, user_key: str, caller: str, all_platforms: bool = False) -> list[str]:
        """Erase the user's rows of the caller's platform, or for the operator every row (other
        gateways' platforms too); audited. Returns the platforms whose profile was removed."""
        platform = erasure_scope(caller, all_platforms)
        async with self.locked([user_key]):  # after any update in flight, never before it
            return await self.write("DeleteUser", caller, self.store.delete, user_key, platform, caller)

    async def consent_rules(self, user_key: str) -> list[ConsentRule]:
        """The user's consent rules as stored now (never cached: another gateway may change them)."""
        return await self._read(self.store.consent_rules, user_key)

    async def audit(self, caller: str, user_key: str | None, since_ms: int, limit: int) -> list[AuditEntry]:
        """The audit trail, newest first, for the operator only; `limit` 0 means 100."""
        require_operator(caller, "the audit trail")
        if not 0 <= limit <= MAX_AUDIT_ENTRIES:
            raise InvalidInput(f"limit={limit} is out of range 0..{MAX_AUDIT_ENTRIES} (0: 100)")
        return await self._read(self.store.audit, user_key, since_ms, limit or 100)

    # --- the parts ---
    async def load(self, user_key: str) -> dict[str, Profile]:
        """The user's stored profiles on the platforms this gateway serves. A store shared with
        a gateway of other platforms (another config) may hold more: those rows are left as
        they are, neither re-embedded, emptied, shown nor migrated from; the operator's
        DeleteUser erases them."""
        stored = await self._read(self.store.load, user_key)
        return {p: prof for p, prof in stored.items() if p in self.catalogue_text}

    async def query(self, read: Callable[..., T], *args: object) -> T:
        """Any other store read (the catalogue log, a health check), run as the book's own are."""
        return await self._read(read, *args)

    async def _read(self, read: Callable[..., T], *args: object) -> T:
        """A store read: at once for a local store (SQLite: no thread may still be reading it
        when the store closes), on a reader thread for a remote one."""
        if self._readers is None:
            return read(*args)
        return await asyncio.get_running_loop().run_in_executor(self._readers, read, *args)

    @contextlib.asynccontextmanager
    async def locked(self, user_keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of these users (in one order everywhere, so no two calls deadlock)."""
        async with contextlib.AsyncExitStack() as stack:
            for n in sorted({lock_stripe(k) for k in user_keys}):
                await stack.enter_async_context(self._user_locks[n])
            yield

    async def write(self, rpc: str, platform: str, write: Callable[..., T], *args: object) -> T:
        """Run a store write on the writer thread, timed as the `store` stage. If the call is
        cancelled meanwhile (deadline, client gone), the commit still goes on: it is waited
        for before the cancellation goes up, so the caller's user lock is held until then and
        no later call reads what this write replaces."""
        with self.timer("store", rpc, platform):
            future = asyncio.get_running_loop().run_in_executor(self._writer, write, *args)
            cancelled = False
            while True:  # however often the call is cancelled meanwhile
                try:
                    result = await asyncio.shield(future)
                    break
                except asyncio.CancelledError:
                    if future.done():
                        if not future.cancelled() and future.exception() is not None:
                            log.error("a %s store write of a cancelled call failed: %s", rpc,
                                      future.exception())
                        raise
                    cancelled = True
            if cancelled:  # committed; the call itself is still cancelled
                raise asyncio.CancelledError
            return result

    async def current(self, user_key: str, profiles: dict[str, Profile], rpc: str,
                      timeout: float) -> dict[str, Profile]:
        """`profiles` (of served platforms: see load) in the served model's embedding space.

        A profile summed by another model (before `make engine` installed this one) would mix
        two embedding spaces, so it is re-embedded from the catalogue titles of its items
        (cache hits: no BERT) and saved; its event count, its weight in migration, is kept.
        Events without a catalogue item cannot be replayed (raw events are never stored): a
        profile with none is emptied. Rows from before versions were stored ('') are taken
        to be the served model's. Nothing happens until a model is being served. A rebuilt
        profile is saved only if its row is still as it was read (ProfileStore.reembed):
        another gateway's update or erasure meanwhile is never overwritten; this call answers
        from the rebuilt profile either way."""
        if not self.model_version:
            return profiles
        stale: list[tuple[Profile, str]] = []
        for profile in profiles.values():
            if not profile.model_version:
                profile.model_version = self.model_version  # written with the next update
            elif profile.model_version != self.model_version:
                stale.append((profile, profile.model_version))
        for profile, old in stale:
            text_of = self.catalogue_text[profile.platform]  # a served platform's (see load)
            texts = [text for text in map(text_of, profile.items) if text is not None]
            if texts:
                vectors = await self.embed(texts, rpc, profile.platform, timeout)
                profile.vec_sum = vectors.mean(axis=0).astype(np.float32) * np.float32(profile.events)
            else:
                profile.vec_sum = np.zeros(self.dim, dtype=np.float32)
            profile.model_version = self.model_version
            self.on_reembedded(profile.platform, "rebuilt" if texts else "emptied")
            log.info("a %s profile from model %s re-embedded for model %s from %d of its %d items",
                     profile.platform, old, self.model_version, len(texts), len(profile.items))
            await self.write(rpc, profile.platform, self.store.reembed, user_key, profile.platform, old,
                             profile.events, profile.vec_sum, self.model_version)
        return profiles
