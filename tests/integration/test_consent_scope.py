"""One platform cannot override what another holds: consent per direction owned by the data's
holder, erasure scoped to the caller's platform, and the audit trail of both (real Triton,
real gateway with a food, a kitchen and an operator key)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from gateway.auth import key_digest
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import Gateway, create_server
from tests.integration.conftest import Stack
from tests.integration.test_access import KEYS, key, status_of

pytestmark = pytest.mark.integration

USER = "carol"
TEA = pb.BehaviorEvent(user_id=USER, item_text="Japanese sencha green tea, 100 bags", event_type="review")


@dataclass
class Keyed:
    gateway: Gateway
    stub: pb_grpc.InterestGatewayStub


@pytest_asyncio.fixture
async def keyed(stack: Stack) -> AsyncIterator[Keyed]:
    """A gateway with the three API keys (no TLS), on the session's Triton and store; carol
    starts with a food profile only and no consent rule."""
    settings = stack.settings.model_copy(update={
        "api_keys": {key_digest(k): platform for platform, k in KEYS.items()}})
    gateway = create_server(settings, triton_url=stack.triton.grpc_url, port=0)
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        await gateway.serving.wait()
        stub = pb_grpc.InterestGatewayStub(channel)
        await stub.DeleteUser(pb.DeleteUserRequest(user_id=USER), timeout=5, metadata=key("*"))
        ingest = await stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=[TEA]), timeout=30,
                                         metadata=key("food"))
        assert ingest.accepted == 1
        yield Keyed(gateway, stub)
    finally:
        await channel.close(None)
        await gateway.stop(grace=1.0)


def since_now() -> int:
    return int(time.time() * 1000) - 1


async def audit_of(stub: pb_grpc.InterestGatewayStub, since_ms: int) -> list[pb.AuditEntry]:
    reply = await stub.ListAudit(pb.ListAuditRequest(user_id=USER, since_ms=since_ms), timeout=5,
                                 metadata=key("*"))
    return list(reversed(reply.entries))  # oldest first


async def test_another_platform_cannot_turn_on_the_holders_consent(keyed: Keyed, stack: Stack) -> None:
    s, since = keyed.stub, since_now()
    recommend = pb.RecommendRequest(user_id=USER, target_platform="kitchen", k=5)
    # the scenario, exactly: food records the refusal, kitchen answers "yes" with its key
    await s.SetConsent(pb.SetConsentRequest(user_id=USER, migrate=False), timeout=5, metadata=key("food"))
    kitchen_yes = await s.SetConsent(pb.SetConsentRequest(user_id=USER, migrate=True), timeout=5,
                                     metadata=key("kitchen"))
    assert kitchen_yes.source_platform == "kitchen", "kitchen's key sets only kitchen's own data"
    answer = await s.Recommend(recommend, timeout=10, metadata=key("kitchen"))
    assert not answer.personalised and list(answer.source_platforms) == []
    assert "migrated from food" not in answer.explanation
    assert [(w.platform, w.reason) for w in answer.withheld_sources] == [
        ("food", "no consent to share food data with kitchen: the user refused")]
    assert "no consent to share food data with kitchen" in answer.explanation
    # naming food's data with kitchen's key is refused, and says who may set it
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.SetConsent(pb.SetConsentRequest(user_id=USER, migrate=True, source_platform="food"),
                           timeout=5, metadata=key("kitchen"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only with the food platform's key or the operator key" in (err.value.details() or "")
    # an operator-wide default does not override food's own "no" either
    await s.SetConsent(pb.SetConsentRequest(user_id=USER, migrate=True), timeout=5, metadata=key("*"))
    assert not (await s.Recommend(recommend, timeout=10, metadata=key("kitchen"))).personalised
    # an unknown target is NOT_FOUND
    unknown = pb.SetConsentRequest(user_id=USER, migrate=True, target_platforms=["books"])
    assert await status_of(s.SetConsent(unknown, timeout=5, metadata=key("food"))) \
        == grpc.StatusCode.NOT_FOUND
    # food's own "yes" for kitchen migrates
    food_yes = await s.SetConsent(
        pb.SetConsentRequest(user_id=USER, migrate=True, target_platforms=["kitchen"]), timeout=5,
        metadata=key("food"))
    assert (food_yes.source_platform, list(food_yes.target_platforms)) == ("food", ["kitchen"])
    migrated = await s.Recommend(recommend, timeout=10, metadata=key("kitchen"))
    assert migrated.personalised and list(migrated.source_platforms) == ["food"]
    assert "migrated from food" in migrated.explanation and not migrated.withheld_sources
    mine = await s.GetProfile(pb.GetProfileRequest(user_id=USER), timeout=5, metadata=key("food"))
    assert mine.migrate_consent
    assert {(c.source_platform, c.target_platform, c.migrate) for c in mine.consents} == {
        ("food", "*", False), ("food", "kitchen", True), ("*", "*", True), ("kitchen", "*", True)}

    pseudonym = keyed.gateway.service.pseudonymise(USER)
    entries = await audit_of(s, since)
    assert [(e.actor, e.action) for e in entries] == [
        ("food", "SetConsent"), ("kitchen", "SetConsent"), ("*", "SetConsent"), ("food", "SetConsent")]
    assert all(e.user_pseudonym == pseudonym and USER not in str(e) for e in entries)
    assert entries[0].change == "food->*: unset -> off" and list(entries[0].platforms) == ["*", "food"]
    assert entries[3].change == "food->kitchen: unset -> on"
    # the audit trail is the operator's: a platform key is refused
    for platform in ("food", "kitchen"):
        assert await status_of(s.ListAudit(pb.ListAuditRequest(), timeout=5, metadata=key(platform))) \
            == grpc.StatusCode.PERMISSION_DENIED


async def test_a_platforms_delete_leaves_the_other_platforms_data(keyed: Keyed) -> None:
    s, since = keyed.stub, since_now()
    kitchen_event = pb.BehaviorEvent(user_id=USER, item_text="cast iron skillet", event_type="view")
    await s.IngestEvents(pb.IngestEventsRequest(platform="kitchen", events=[kitchen_event]), timeout=30,
                         metadata=key("kitchen"))
    await s.SetConsent(pb.SetConsentRequest(user_id=USER, migrate=True), timeout=5, metadata=key("food"))
    # the scenario, exactly: DeleteUser with the kitchen key
    erased = await s.DeleteUser(pb.DeleteUserRequest(user_id=USER), timeout=5, metadata=key("kitchen"))
    assert (erased.platforms_removed, list(erased.removed_platforms)) == (1, ["kitchen"])
    food = await s.GetProfile(pb.GetProfileRequest(user_id=USER), timeout=5, metadata=key("food"))
    assert [(p.platform, p.event_count) for p in food.platforms] == [("food", 1)]
    assert food.migrate_consent, "food's consent rule is food's, and stays"
    assert await status_of(s.GetProfile(pb.GetProfileRequest(user_id=USER), timeout=5,
                                        metadata=key("kitchen"))) == grpc.StatusCode.NOT_FOUND
    # a platform key cannot ask for every platform
    everywhere = pb.DeleteUserRequest(user_id=USER, all_platforms=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.DeleteUser(everywhere, timeout=5, metadata=key("kitchen"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator key" in (err.value.details() or "")
    # the operator's delete removes everything
    gone = await s.DeleteUser(everywhere, timeout=5, metadata=key("*"))
    assert (gone.platforms_removed, list(gone.removed_platforms)) == (1, ["food"])
    for platform in ("food", "*"):
        assert await status_of(s.GetProfile(pb.GetProfileRequest(user_id=USER), timeout=5,
                                            metadata=key(platform))) == grpc.StatusCode.NOT_FOUND
    assert keyed.gateway.service.store.consent_rules(keyed.gateway.service.pseudonymise(USER)) == []

    pseudonym = keyed.gateway.service.pseudonymise(USER)
    entries = [e for e in await audit_of(s, since) if e.action == "DeleteUser"]
    assert [(e.actor, list(e.platforms)) for e in entries] == [("kitchen", ["kitchen"]), ("*", ["food"])]
    assert all(e.user_pseudonym == pseudonym and USER not in str(e) for e in entries)
    assert "erased on platform kitchen" in entries[0].change
    assert "erased on every platform" in entries[1].change
