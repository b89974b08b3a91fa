"""Profile writes commit on the gateway's writer thread, off the event loop, one user at a time.
(tests/integration/test_store_engines.py runs these on both store engines.)

A commit fsyncs; on a VM an fsync can stall for hundreds of milliseconds. Here a commit is
held back on purpose (an Event, not a clock) to check what waits for it and what does not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.servicer import InterestGatewayService
from interest_core.profile_book import lock_stripe
from interest_core.profiles import ProfileDelta
from tests.unit.test_profile_versions import TITLES, make_service, store_profile
from tests.unit.test_served_ranking import CTX


class HeldCommits:
    """Wraps `store.add_events_many` (ingest's write): the first `hold` commits wait (in the
    writer thread) until `release` is set; `entered` is set when the first of them is waiting."""

    def __init__(self, svc: InterestGatewayService, hold: int = 1) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold = hold
        self.add: Callable[[Sequence[ProfileDelta], str], list[tuple[str, str]]] = svc.store.add_events_many
        svc.store.add_events_many = self  # type: ignore[method-assign]

    def __call__(self, deltas: Sequence[ProfileDelta], model_version: str) -> list[tuple[str, str]]:
        if self.hold > 0:
            self.hold -= 1
            self.entered.set()
            assert self.release.wait(30), "the test never released the held commit"
        return self.add(deltas, model_version)

    async def wait_entered(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 30)


def ingest(svc: InterestGatewayService, user: str, item: str) -> asyncio.Task[pb.IngestEventsResponse]:
    request = pb.IngestEventsRequest(platform="kitchen", events=[
        pb.BehaviorEvent(user_id=user, item_id=item, event_type="purchase")])
    return asyncio.ensure_future(svc.IngestEvents(request, CTX))


def stored_events(svc: InterestGatewayService, user: str) -> int:
    return svc.store.load(svc.pseudonymise(user))["kitchen"].events


def test_a_stalled_commit_holds_up_its_own_user_only(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    # (users sharing a lock stripe would wait for each other, as one user does)
    assert lock_stripe(svc.pseudonymise("alice")) != lock_stripe(svc.pseudonymise("bob"))

    async def run() -> None:
        await ingest(svc, "bob", "k0")
        held = HeldCommits(svc)
        alice = ingest(svc, "alice", "k1")
        await held.wait_entered()  # alice's commit is stuck in its fsync
        # Another user's calls go on meanwhile: the event loop is not waiting on the disk.
        bob = await svc.GetProfile(pb.GetProfileRequest(user_id="bob"), CTX)
        assert bob.platforms[0].event_count == 1
        assert not alice.done()
        # Alice's own read waits for her update (her lock), then sees it.
        alice_profile = asyncio.ensure_future(svc.GetProfile(pb.GetProfileRequest(user_id="alice"), CTX))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not alice_profile.done()
        held.release.set()
        assert (await alice).accepted == 1
        assert (await alice_profile).platforms[0].event_count == 1

    asyncio.run(run())
    svc.close()


def test_concurrent_ingests_for_one_user_lose_no_event(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    items = [list(TITLES)[n % len(TITLES)] for n in range(24)]

    async def run() -> list[pb.IngestEventsResponse]:
        return await asyncio.gather(*(ingest(svc, "carol", item) for item in items))

    assert all(r.accepted == 1 for r in asyncio.run(run()))
    assert stored_events(svc, "carol") == len(items)  # every add applied to the row as committed
    assert sorted(svc.store.load(svc.pseudonymise("carol"))["kitchen"].items) == sorted(TITLES)
    svc.close()


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_cancelled_ingest_still_commits_before_the_next_update_reads(tmp_path: Path,
                                                                       cancels: int) -> None:
    """A deadline or a client gone cancels the call, not its commit, which is already under
    way in the writer thread: the next update of that user must read the committed profile,
    or it would write its own over it and lose the first event. Cancelled again while it
    waits, it still waits."""
    svc, _ = make_service(tmp_path)

    async def run() -> None:
        held = HeldCommits(svc)
        first = ingest(svc, "dave", "k0")
        await held.wait_entered()
        for _ in range(cancels):
            first.cancel()
            await asyncio.sleep(0.01)
        second = ingest(svc, "dave", "k1")
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not second.done()  # waits for the cancelled call's commit
        held.release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second).accepted == 1

    asyncio.run(run())
    assert stored_events(svc, "dave") == 2
    svc.close()


def test_delete_waits_for_an_update_in_flight(tmp_path: Path) -> None:
    """An ingest into a profile of an older model reads it, then waits for the model to
    re-embed it. A DeleteUser meanwhile must wait for that ingest's save and then erase, or
    the save would bring the deleted profile back."""
    svc, encoder = make_service(tmp_path)
    store_profile(svc, "erin", ["k0"], version="old")
    gate = asyncio.Event()
    embed = encoder.embed

    async def slow_embed(texts: Sequence[str], rpc: str, platform: str,
                         timeout: float | None = None) -> np.ndarray:
        if rpc == "IngestEvents" and texts == [TITLES["k0"]]:  # the stale profile's rebuild
            await gate.wait()
        return await embed(texts, rpc, platform, timeout)

    encoder.embed = slow_embed  # type: ignore[method-assign]

    async def run() -> int:
        update = ingest(svc, "erin", "k1")
        while not encoder.calls:  # the event's own embedding; the rebuild comes next
            await asyncio.sleep(0.01)
        for _ in range(10):
            await asyncio.sleep(0.01)
        delete = asyncio.ensure_future(svc.DeleteUser(pb.DeleteUserRequest(user_id="erin"), CTX))
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert not delete.done()
        gate.set()
        assert (await update).accepted == 1
        return (await delete).platforms_removed

    assert asyncio.run(run()) == 1
    assert svc.store.load(svc.pseudonymise("erin")) == {}
    svc.close()
