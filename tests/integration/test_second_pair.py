"""A second platform pair served given only its dataset adapter and config entries: a tiny
model trained on the social-video fixture (config/social-video.yaml, state moved to a temporary
folder), its engine exported, quantized, gated and installed by the real CLIs into a temporary
model repository, served by the real Triton and the real gateway."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml

from devtools.served_eval import event_types, serve_tasks
from devtools.triton_launcher import free_port
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import ROOT, Settings, load_settings
from interest_model import trainer as train
from interest_model.datasets import InteractionData, load_dataset
from interest_model.evaluation import offline as evaluate
from quantize import export, install, int8, validate
from tests.integration.conftest import serve_stack

pytestmark = pytest.mark.integration

CONFIG = ROOT / "config" / "social-video.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "social-video"
METRICS = ("ndcg@10", "hr@10", "recall@50", "mrr")


def fixture_ids(filename: str, key: str) -> set[str]:
    """Item ids as the fixture's own files list them (not through the adapter)."""
    return {json.loads(line)[key] for line in (FIXTURE / filename).read_text().splitlines() if line.strip()}


@dataclass
class Built:
    config: Path
    settings: Settings
    data: InteractionData
    offline: dict[str, object]


@dataclass
class PairStack:
    built: Built
    stub: pb_grpc.InterestGatewayStub


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Train (4 epochs), export -> INT8 -> gate -> install, and evaluate offline, each with the
    CLI's own main and config/social-video.yaml; INTEREST_* variables of other fixtures are
    cleared meanwhile, so the config alone says where everything goes."""
    root = tmp_path_factory.mktemp("second-pair")
    config = root / "social-video.yaml"
    entries = yaml.safe_load(CONFIG.read_text())
    entries.update(var_dir=str(root / "var"), model_repository=str(root / "model_repository"))
    config.write_text(yaml.safe_dump(entries))
    ckpt, art, cfg = root / "ckpt", root / "artifacts", ["--config", str(config)]
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("INTEREST_")]:
            env.delenv(key)
        assert train.main([*cfg, "--dataset", "social-video", "--out", str(ckpt), "--epochs", "4",
                           "--batch", "32", "--categories", "6"]) == 0
        assert export.main(["--out", str(art / "fp32.onnx"), "--checkpoint", str(ckpt)]) == 0
        assert int8.main([*cfg, "--fp32", str(art / "fp32.onnx"), "--out", str(art / "int8.onnx"),
                          "--activations", "uint8"]) == 0
        assert validate.main([*cfg, "--reference", str(art / "fp32.onnx"), "--candidate",
                              str(art / "int8.onnx"), "--report", str(art / "validation.json")]) == 0
        report = json.loads((art / "validation.json").read_text())
        assert report["texts"] == 48 and report["passed"], report  # the titles calibration never saw
        assert install.main([*cfg, "--onnx", str(art / "int8.onnx"), "--report", str(art / "validation.json"),
                             "--checkpoint", str(ckpt)]) == 0
        assert evaluate.main([*cfg, "--dataset", "social-video", "--checkpoint", str(ckpt),
                              "--int8", str(art / "int8.onnx"), "--out", str(root / "offline.json")]) == 0
        settings = load_settings(config, grpc_port=0, metrics_port=free_port(),
                                 triton_http_port=free_port(), triton_grpc_port=free_port(),
                                 triton_metrics_port=free_port())
    return Built(config, settings, load_dataset(settings, "social-video"),
                 json.loads((root / "offline.json").read_text()))


@pytest_asyncio.fixture(scope="module")
async def pair(built: Built) -> AsyncIterator[PairStack]:
    assert (built.settings.model_repository / "interest_encoder" / "1" / "model.onnx").exists()
    async with serve_stack(built.settings) as served:
        yield PairStack(built, served.stub)


async def test_social_only_user_gets_video_recommendations(pair: PairStack) -> None:
    """Cold start on the video site: only likes/comments/shares on the social app, recommendations
    from the video catalogue. Posts p001-p008 and videos v001-v008 are the fixture's cooking theme."""
    user = "sv-social-only"
    events = [pb.BehaviorEvent(user_id=user, item_id=f"p00{i}", event_type=kind, position=i)
              for i, kind in zip(range(1, 7), ("like", "comment", "share", "like", "like", "Comment"))]
    await pair.stub.SetConsent(pb.SetConsentRequest(user_id=user, migrate=True), timeout=10)
    ingest = await pair.stub.IngestEvents(pb.IngestEventsRequest(platform="social", events=events),
                                          timeout=30)
    assert (ingest.accepted, ingest.rejected) == (6, 0), ingest.results
    rec = await pair.stub.Recommend(pb.RecommendRequest(user_id=user, target_platform="video", k=10),
                                    timeout=10)
    ids = [item.item_id for item in rec.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids) <= fixture_ids("videos.jsonl", "id"), ids
    cooking = {f"v00{i}" for i in range(1, 9)}
    assert set(ids[:5]) <= cooking, f"top 5 for a cooking-only social user: {ids[:5]}"
    assert "migrated from social" in rec.explanation
    profile = await pair.stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=10)
    assert [p.platform for p in profile.platforms] == ["social"]


async def test_event_types_come_from_each_platforms_config_entry(pair: PairStack) -> None:
    """'like' is a social event, not a video one: EncodeInterest refuses it for the video platform
    with INVALID_ARGUMENT naming the platform, IngestEvents rejects that one event, and a
    'watch' on the social platform is refused the same way."""
    like = pb.BehaviorEvent(user_id="sv-mixed", item_id="v001", event_type="like")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.stub.EncodeInterest(pb.EncodeInterestRequest(platform="video", events=[like]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_type 'like' is not one of watch for platform 'video'" in (err.value.details() or "")
    watch = pb.BehaviorEvent(user_id="sv-mixed", item_id="v001", event_type="watch")
    ingest = await pair.stub.IngestEvents(pb.IngestEventsRequest(platform="video", events=[like, watch]),
                                          timeout=30)
    assert [r.accepted for r in ingest.results] == [False, True]
    assert ingest.results[0].error_code == "INVALID_ARGUMENT" and "'video'" in ingest.results[0].error
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.stub.EncodeInterest(pb.EncodeInterestRequest(
            platform="social", events=[pb.BehaviorEvent(item_id="p001", event_type="watch")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "for platform 'social'" in (err.value.details() or "")


async def test_served_ranking_equals_offline_evaluate(pair: PairStack) -> None:
    """Every test user of the fixture through the gateway (devtools.served_eval's loop), both
    directions: the same NDCG@10, HR@10, Recall@50 and MRR as interest_model.evaluation.offline's INT8
    ranking (model + trained blend) on the same users."""
    built = pair.built
    tasks = built.offline["tasks"]
    assert isinstance(tasks, dict)
    whole = {t for t in tasks if "/history-" not in t}
    assert whole == {"social->video", "video->social"}
    for direction in whole:  # the same users again, split by source-history length
        subsets = [b for t, b in tasks.items() if t.startswith(f"{direction}/history-")]
        assert subsets and sum(b["users"] for b in subsets) == tasks[direction]["users"]
    await serve_tasks(pair.stub, built.data, tasks, event_types(built.settings, built.data))
    for task in sorted(whole):
        body = tasks[task]
        assert body["users"] == 19, task  # the fixture's test users (README: 19 test)
        served, offline = body["methods"]["served"], body["methods"]["model_int8"]
        assert body["served_offline_reference"] is offline
        for metric in METRICS:
            assert served[metric] == pytest.approx(offline[metric], abs=1e-4), (task, metric, served, offline)
        assert served["ndcg@10"] > body["methods"]["popularity"]["ndcg@10"], task
