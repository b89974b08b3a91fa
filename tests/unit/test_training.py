"""Training and evaluation run on another pair of platforms given only its adapter: the
social-video fixture (social app -> video site). Checks the checkpoint `make engine` reads,
resuming, reproducibility by seed, the new-items hold-out, and the eval report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from interest_core.config import ROOT, load_settings
from interest_core.contract import ASSETS_FILE
from interest_core.ranking.assets import Blend, RankingAssets
from interest_core.tokenizer import BehaviourTokenizer
from interest_model import finetune
from interest_model import trainer as train
from interest_model.backbone import TUNED_LAYERS, InterestEncoder
from interest_model.datasets import UserHistory, load_dataset
from interest_model.evaluation import offline as evaluate
from interest_model.evaluation.metrics import expected_random
from interest_model.evaluation.report import verdicts, write_all
from interest_model.features import embed_titles
from interest_model.tasks import Direction, few_overlap, user_rows

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("social-video")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(FIXTURES), "var_dir": str(root / "var"),
        "datasets": {"social-video": {
            "adapter": "social_video", "path": "social-video",
            "platforms": {"social": "social", "video": "video"},
            "options": {"valid_fraction": 0.15, "test_fraction": 0.15, "seed": 7}}},
    }))
    return path


def run_train(config: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert train.main(["--config", str(config), "--dataset", "social-video", "--out", str(out),
                       "--batch", "32", "--categories", "6", *extra]) == 0
    return json.loads((out / "train_report.json").read_text())


@pytest.fixture(scope="module")
def checkpoint(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "social-video"
    run_train(config, out, "--epochs", "4")
    return out


def head(checkpoint: Path) -> torch.Tensor:
    return torch.load(checkpoint / "interest_head.pt")["weight"]


def head_gap(a: Path, b: Path) -> float:
    """Relative Frobenius distance of checkpoint a's head from b's."""
    return float((head(a) - head(b)).norm() / head(b).norm())


def test_checkpoint_is_what_make_engine_reads(checkpoint: Path) -> None:
    model = InterestEncoder.load(checkpoint)
    assert model.head is not None and model.dim == 384
    assert not (checkpoint / "config.json").exists(), "a frozen backbone is not copied"
    ids, mask = BehaviourTokenizer()(["homemade sourdough bread", "premier league highlights"])
    with torch.no_grad():
        out = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    report = json.loads((checkpoint / "train_report.json").read_text())
    assert report["best_epoch"] >= 1 and len(report["history"]) == 4
    assert len(report["categories"]) == 6 and len(set(report["categories"])) == 6


def test_assets_hold_migration_blend_and_categories(checkpoint: Path) -> None:
    assets = RankingAssets.load(checkpoint / ASSETS_FILE)
    assert set(assets.migration) == {("social", "video"), ("video", "social")}
    assert assets.cooccurrence[("social", "video")].shape == (48, 48)
    assert set(assets.blend) == set(assets.migration)
    names = json.loads((checkpoint / "train_report.json").read_text())["categories"]
    top3 = assets.categories(np.eye(384, dtype=np.float32)[0], top=3)
    every = assets.categories(np.eye(384, dtype=np.float32)[0], top=len(names))
    assert top3 == every[:3], "the top 3 are the first 3 of the full ranking"
    assert sorted(n for n, _ in every) == sorted(names), "every trained category, each once"
    probs = [p for _, p in every]
    assert probs == sorted(probs, reverse=True) and min(probs) > 0.0
    assert abs(sum(probs) - 1.0) < 1e-5, "a distribution over the K categories"


def test_assets_round_trip_and_blend_formula(tmp_path: Path) -> None:
    import scipy.sparse as sp

    cooc = sp.csr_matrix(np.array([[0, 3, 0], [1, 0, 0]], dtype=np.float32))
    assets = RankingAssets(item_ids={"a": ["x", "y"], "b": ["p", "q", "r"]},
                           migration={("a", "b"): np.eye(2, dtype=np.float32)},
                           cooccurrence={("a", "b"): cooc},
                           popularity={"b": np.array([0, 1, 7], np.float32)},
                           blend={("a", "b"): Blend(cooc=0.5, pop=0.1)})
    assets.save(tmp_path / ASSETS_FILE)
    loaded = RankingAssets.load(tmp_path / ASSETS_FILE)
    got = loaded.collaborative({"a": [[0, 1], [1]]}, "b")
    want = 0.5 * np.log1p(np.array([[1, 3, 0], [1, 0, 0]])) + 0.1 * np.log1p(np.array([0, 1, 7]))
    assert np.allclose(got, want, atol=1e-6)
    assert list(loaded.reorder("b", ["r", "zz", "p"])) == [2, -1, 0]


def test_resume_continues_and_seed_reproduces(config: Path, tmp_path: Path) -> None:
    first = run_train(config, tmp_path / "a", "--epochs", "2")
    resumed = run_train(config, tmp_path / "a", "--epochs", "3")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]
    run_train(config, tmp_path / "b", "--epochs", "3")
    run_train(config, tmp_path / "c", "--epochs", "3", "--seed", "1")
    # Same seed and epochs, resumed or not: the same weights up to float summation order,
    # which Adam can amplify where a gradient is near zero; another seed lands far away.
    gap = lambda d: head_gap(d, tmp_path / "b")  # noqa: E731
    assert gap(tmp_path / "a") < 1e-4, gap(tmp_path / "a")
    assert gap(tmp_path / "c") > 1e-2, gap(tmp_path / "c")


def test_new_items_never_reach_training(config: Path, tmp_path: Path) -> None:
    report = run_train(config, tmp_path / "new", "--epochs", "2", "--new-items-fraction", "0.25")
    new = report["new_items"]
    assert new["platform"] == "video" and len(new["items"]) == 12
    assets = RankingAssets.load(tmp_path / "new" / ASSETS_FILE)
    cols = [assets.item_ids["video"].index(i) for i in new["items"]]
    assert assets.popularity["video"][cols].sum() == 0
    assert assets.cooccurrence[("social", "video")][:, cols].nnz == 0
    assert assets.cooccurrence[("video", "social")][cols, :].nnz == 0


def test_few_overlap_keeps_a_nested_seeded_share_of_the_overlap_users(config: Path) -> None:
    data = load_dataset(load_settings(config), "social-video")

    def both(users: list[UserHistory]) -> list[str]:
        return [u.user_key for u in users if u.on("social") and u.on("video")]

    overlap = both(data.split("train"))
    small, large = few_overlap(data, 0.2, seed=3), few_overlap(data, 0.5, seed=3)
    assert len(both(small.split("train"))) == round(0.2 * len(overlap))
    assert set(both(small.split("train"))) < set(both(large.split("train"))) < set(overlap)
    assert both(few_overlap(data, 0.2, seed=4).split("train")) != both(small.split("train"))
    assert both(few_overlap(data, 0.2, seed=3).split("train")) == both(small.split("train"))
    single = [u.user_key for u in data.split("train") if u.user_key not in set(overlap)]
    assert single and set(single) <= {u.user_key for u in small.split("train")}
    for split in ("valid", "test"):
        assert small.split(split) == data.split(split)
    assert few_overlap(data, 1.0, seed=3) is data
    with pytest.raises(ValueError, match="overlap fraction"):
        few_overlap(data, 0.0, seed=3)


def test_few_overlap_training_sees_only_the_kept_users(config: Path, tmp_path: Path) -> None:
    report = run_train(config, tmp_path / "few", "--epochs", "1", "--overlap-fraction", "0.25", "--seed", "5")
    assert report["overlap_fraction"] == 0.25
    data = load_dataset(load_settings(config), "social-video")
    kept = few_overlap(data, 0.25, seed=5).split("train")
    pairs = sum(len(u.on("social")) * len(u.on("video")) for u in kept if u.on("social") and u.on("video"))
    cooc = RankingAssets.load(tmp_path / "few" / ASSETS_FILE).cooccurrence[("social", "video")]
    assert cooc.sum() == pairs  # every kept pair counted once (histories hold distinct items)
    assert 0 < pairs < sum(len(u.on("social")) * len(u.on("video")) for u in data.split("train"))


def test_eval_runs_on_the_other_platform_pair(config: Path, checkpoint: Path, tmp_path: Path) -> None:
    new_ckpt, new_ckpt_3, few_ckpt = tmp_path / "new", tmp_path / "new-seed3", tmp_path / "few"
    run_train(config, new_ckpt, "--epochs", "2", "--new-items-fraction", "0.2")
    run_train(config, new_ckpt_3, "--epochs", "2", "--new-items-fraction", "0.2", "--seed", "3")
    run_train(config, few_ckpt, "--epochs", "2", "--overlap-fraction", "0.05")
    out = tmp_path / "offline.json"
    assert evaluate.main(["--config", str(config), "--dataset", "social-video", "--checkpoint",
                          str(checkpoint), "--new-items-checkpoint", str(new_ckpt),
                          "--new-items-checkpoint", str(new_ckpt_3),
                          "--overlap-checkpoint", str(few_ckpt), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    tasks = result["tasks"]
    assert {t for t in tasks if "/history-" not in t} == {
        "social->video", "video->social", "social->video/new-items",
        "social->video/overlap-5%", "video->social/overlap-5%"}
    few = tasks["social->video/overlap-5%"]
    assert few["overlap_fraction"] == 0.05 and few["users"] == tasks["social->video"]["users"]
    cooc = "cooccurrence"
    assert few["methods"][cooc]["ndcg@10"] != tasks["social->video"]["methods"][cooc]["ndcg@10"]
    assert few["cooccurrence_ratio_ci95"]["baseline"] == "cooccurrence"
    few_verdict = next(v for v in verdicts(result) if v["task"] == "social->video/overlap-5%")
    assert few_verdict["need"] == 1.3 and few_verdict["ratio_ci95"] == few["cooccurrence_ratio_ci95"]["ci95"]
    assert few_verdict["met"] == (few_verdict["ours"] >= 1.3 * few_verdict["best_baseline_ndcg@10"]
                                  and few_verdict["ours"] > few_verdict["strongest_baseline_ndcg@10"])
    for task in ("social->video", "video->social", "social->video/overlap-5%", "video->social/overlap-5%"):
        # weights searched on test, from a grid that holds those chosen on valid: never below them
        ceiling = tasks[task]["blend_ceiling"]
        assert ceiling["ndcg@10"] >= tasks[task]["methods"]["model_fp32"]["ndcg@10"] - 1e-5, task
    served = RankingAssets.load(checkpoint / ASSETS_FILE).blend[("social", "video")]
    weights = tasks["social->video"]["blend_ceiling"]["served_weights"]
    assert weights == {"cooc": served.cooc, "pop": served.pop}
    for direction in ("social->video", "video->social"):  # its users again, by history length
        subsets = [b for t, b in tasks.items() if t.startswith(f"{direction}/history-")]
        assert subsets and sum(b["users"] for b in subsets) == tasks[direction]["users"]
    assert all("tuned" in tasks[t] for t in ("social->video", "video->social", "social->video/new-items"))
    warm = result["tasks"]["social->video"]["methods"]
    assert set(warm) >= {"popularity", "cooccurrence", "zero_shot", "text_ridge", "emcdr",
                         "model_fp32", "model_only_fp32"}
    for m in warm.values():
        assert 0.0 <= m["ndcg@10"] <= 1.0 and 0.0 <= m["recall@50"] <= 1.0
        assert m["ndcg@10_ci95"][0] <= m["ndcg@10"] <= m["ndcg@10_ci95"][1]
    cold = result["tasks"]["social->video/new-items"]
    assert cold["new_items"] == 10 and cold["users"] > 0
    # two seeded splits pooled: every (split, user) row counts once in the means
    splits = cold["splits"]
    assert [s["seed"] for s in splits] == [0, 3] and cold["user_rows"] == sum(s["users"] for s in splits)
    assert cold["users"] <= cold["user_rows"]
    for method, m in cold["methods"].items():
        pooled = sum(s["ndcg@10"][method] * s["users"] for s in splits) / cold["user_rows"]
        assert m["ndcg@10"] == pytest.approx(pooled, abs=2e-5)
        assert m["ndcg@10_ci95"][0] <= m["ndcg@10"] <= m["ndcg@10_ci95"][1]
    # popularity cannot score items no one took: reported at a random ranking's expected value
    data = load_dataset(load_settings(config), "social-video")
    test_rows = user_rows(data.split("test"), data.platforms, {})
    expected = []
    for ckpt in (new_ckpt, new_ckpt_3):
        held = json.loads((ckpt / "train_report.json").read_text())["new_items"]["items"]
        new = np.array(sorted(data.catalogues["video"].index()[i] for i in held))
        users = evaluate.task_users(data, Direction("social", "video"), new)
        expected.append(expected_random(len(new), [len(set(test_rows["video"][u]) & set(new.tolist()))
                                                   for u in users])["ndcg@10"])
    assert "expected value" in cold["methods"]["popularity"]["note"]
    popularity = cold["methods"]["popularity"]["ndcg@10"]
    assert popularity == pytest.approx(np.concatenate(expected).mean(), abs=1e-5)
    result.update(revision="test", machine="test", primary_task="social->video")
    write_all(result, tmp_path / "results")
    assert (tmp_path / "results" / "eval.png").stat().st_size > 10_000
    table = (tmp_path / "results" / "eval.md").read_text()
    assert "## Targets" in table and "social->video/new-items" in table
    assert "Pooled over 2 seeded new-items splits" in table and "social->video/overlap-5%" in table
    assert "## Who the users are" in table  # the held-out users beside the training users, each way
    for direction in ("social->video", "video->social"):
        splits = {r["split"]: r for r in result["populations"][direction]}
        assert set(splits) == {"train", "valid", "test"}
        assert splits["test"]["users"] == tasks[direction]["users"]
    primary = next(v for v in verdicts(result) if v["task"] == "social->video" and "1.1x" in v["target"])
    paired = result["tasks"]["social->video"]["ratio_ci95"]
    assert paired["method"] == "model_fp32" and paired["baseline"] == primary["best_baseline"]
    assert primary["ratio_ci95"] == paired["ci95"] and primary["need"] == 1.1
    assert paired["ci95"][0] <= primary["ratio"] <= paired["ci95"][1]
    assert "ratio_ci95" in table


def test_within_examples_split_each_history_into_visible_and_held_out() -> None:
    import random

    from interest_model.migration_model import within_examples

    rows = {"a": [[1, 2, 3, 4, 5], [7], []], "b": [[10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]}
    got = within_examples(rows, 10, random.Random(3))
    assert len(got) == 3, "users with fewer than 2 items on a platform give no example"
    for d, visible, held in got:
        assert d.within and d.source in rows
        assert visible and held and not set(visible) & set(held)
        assert sorted(visible + held) in [sorted(r) for r in rows[d.source]]
    assert max(len(h) for _, v, h in got if len(v) + len(h) == 10) == 2  # 20% of 10
    assert within_examples(rows, 10, random.Random(3)) == got, "seeded: the same draw"
    assert len(within_examples(rows, 2, random.Random(3))) == 2
    assert within_examples(rows, 0, random.Random(3)) == []


def test_cosine_lr_decays_from_base_to_floor() -> None:
    from interest_model.migration_model import cosine_lr

    values = [cosine_lr(1e-3, s, 100) for s in range(101)]
    assert values[0] == pytest.approx(1e-3) and values[-1] == pytest.approx(5e-5)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[50] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))


def test_within_loss_masks_the_users_visible_items() -> None:
    from interest_model.migration_model import MigrationModel
    from interest_model.tasks import Direction

    feats = np.eye(3, 4, dtype=np.float32)
    d = Direction("a", "a")
    model = MigrationModel({"a": feats}, [d], {})
    # Items 0 and 1 are visible, so item 2 is the only candidate left: the softmax is certain.
    assert model.loss([(d, [0, 1], [2])]).item() == pytest.approx(0.0, abs=1e-6)
    cross = Direction("a", "b")
    model = MigrationModel({"a": feats, "b": feats}, [cross], {})
    assert model.loss([(cross, [0, 1], [2])]).item() > 0.1, "a cross-platform softmax masks nothing"


def run_killed_in_epoch_3_then_resumed(config: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
                                       *extra: str) -> dict[str, object]:
    """Train with `extra`, killed at the start of epoch 3 (its example draw), then resume it."""
    real, draws = train.within_examples, []

    def interrupted(*args: object, **kwargs: object) -> object:
        draws.append(1)
        if len(draws) == 3:
            raise KeyboardInterrupt("killed in epoch 3")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "within_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train(config, out, *extra)
    monkeypatch.setattr(train, "within_examples", real)
    return run_train(config, out, *extra)


def test_within_platform_and_cosine_schedule_resume_after_interruption(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("--epochs", "3", "--within-platform", "40", "--schedule", "cosine")
    fresh = run_train(config, tmp_path / "fresh", *extra)
    assert fresh["schedule"] == "cosine" and fresh["within_platform_examples"] == 40
    resumed = run_killed_in_epoch_3_then_resumed(config, tmp_path / "cut", monkeypatch, *extra)
    # The learning rate follows the step in the whole run, so the resumed run ends where the
    # uninterrupted one did.
    losses = lambda r: [h["loss"] for h in r["history"]]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(fresh), rel=1e-4)
    assert head_gap(tmp_path / "cut", tmp_path / "fresh") < 1e-4
    assets = RankingAssets.load(tmp_path / "fresh" / ASSETS_FILE)
    assert set(assets.migration) == {("social", "video"), ("video", "social")}, \
        "same-platform maps are not served"


def test_identity_decay_keeps_the_head_near_the_pretrained_space(config: Path, tmp_path: Path) -> None:
    drift = {}
    for decay in ("0", "1"):
        report = run_train(config, tmp_path / decay, "--epochs", "3", "--identity-decay", decay)
        assert report["identity_decay"] == float(decay)
        drift[decay] = float(((head(tmp_path / decay) - torch.eye(384)) ** 2).sum())
    assert drift["0"] > 0.0
    assert drift["1"] < 0.5 * drift["0"], drift


def test_averaged_weights_lag_the_trained_ones_and_resume_after_interruption(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drift = lambda d: float(((head(d) - torch.eye(384)) ** 2).sum())  # noqa: E731
    extra = ("--epochs", "3", "--average", "0.99")
    fresh = run_train(config, tmp_path / "avg", *extra)
    assert fresh["average"] == 0.99
    run_train(config, tmp_path / "plain", "--epochs", "3")
    # The average starts at the initial (identity) weights and moves 1% per step toward the
    # trained ones, so it stays nearer the start than they are.
    assert 0.0 < drift(tmp_path / "avg") < 0.8 * drift(tmp_path / "plain")
    run_killed_in_epoch_3_then_resumed(config, tmp_path / "cut", monkeypatch, *extra)
    assert head_gap(tmp_path / "cut", tmp_path / "avg") < 1e-4, \
        "the resumed run restores the average, not just the trained weights"


def concatenated_scores(heads: list[np.ndarray], maps: list[np.ndarray], source: np.ndarray,
                        target: np.ndarray, histories: list[list[int]]) -> np.ndarray:
    """The ensemble written out: items embedded by the stacked heads, block-diagonal mapping."""
    from scipy.linalg import block_diag

    from interest_model.tasks import Direction, model_scores

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    stacked = np.concatenate(heads)
    items = {"s": unit(source @ stacked.T), "t": unit(target @ stacked.T)}
    return model_scores(items, block_diag(*maps), Direction("s", "t"), histories)


def test_merge_members_ranks_exactly_as_the_ensemble() -> None:
    from interest_model.migration_model import merge_members
    from interest_model.tasks import Direction, model_scores

    rng = np.random.default_rng(0)
    dim, k = 8, 3
    d = Direction("s", "t")
    heads = [np.eye(dim) + 0.5 * rng.standard_normal((dim, dim)) for _ in range(k)]
    maps = [np.eye(dim) + 0.5 * rng.standard_normal((dim, dim)) for _ in range(k)]
    source, target = rng.standard_normal((30, dim)), rng.standard_normal((40, dim))
    histories = [list(rng.choice(30, size=n, replace=False)) for n in (1, 3, 7, 12)]
    want = concatenated_scores(heads, maps, source, target, histories)

    head, merged = merge_members(heads, [{d: m} for m in maps])
    assert head.shape == (dim, dim) and merged[d].shape == (dim, dim)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    got = model_scores({"s": unit(source @ head.T), "t": unit(target @ head.T)}, merged[d], d, histories)
    # The same scores up to one positive factor per user, so the same ranking for everyone.
    ratio = got / want
    assert np.all(ratio > 0) and np.allclose(ratio, ratio[:, :1], rtol=1e-4)
    assert (np.argsort(-got, axis=1) == np.argsort(-want, axis=1)).all()
    # A single member is returned as it is; members that differ are not just averaged.
    assert merge_members(heads[:1], [{d: maps[0]}])[0] is heads[0]
    head_sum, map_sum = np.sum(heads, axis=0), np.sum(maps, axis=0)
    averaged = model_scores({"s": unit(source @ head_sum.T), "t": unit(target @ head_sum.T)},
                            map_sum, d, histories)
    assert not (np.argsort(-averaged, axis=1) == np.argsort(-want, axis=1)).all()


def test_members_train_in_workers_and_merge_into_one_model(config: Path, tmp_path: Path) -> None:
    from interest_core.config import load_settings
    from interest_model.datasets import load_dataset
    from interest_model.evaluation import evaluate as ndcg_of
    from interest_model.features import catalogue_features
    from interest_model.tasks import Direction, mask_to, pairs_of, restrict, user_rows

    extra = ("--epochs", "2", "--new-items-fraction", "0.25")
    report = run_train(config, tmp_path / "ens", *extra, "--members", "2", "--seed", "3")
    assert report["members"] == 2 and [r["seed"] for r in report["member_runs"]] == [3, 4]
    states = [torch.load(tmp_path / "ens" / "members" / f"seed-{s}" / "train_state.pt",
                         weights_only=False) for s in (3, 4)]
    assert all(s["epoch"] == 1 for s in states), "each member ran its 2 epochs and kept its state"
    assert head(tmp_path / "ens").shape == (384, 384), "served as one head of the usual size"
    model = InterestEncoder.load(tmp_path / "ens")
    assert model.dim == 384

    # Member 3, trained in a worker process (another string-hash seed), is the run --seed 3
    # makes in this one.
    single = run_train(config, tmp_path / "one", *extra, "--seed", "3")
    assert single["new_items"] == report["new_items"]
    assert [h["loss"] for h in report["member_runs"][0]["history"]] == \
        pytest.approx([h["loss"] for h in single["history"]], rel=1e-4)
    # --jobs 1 trains the members one after the other in this process: the same runs and the
    # same merged model.
    seq = run_train(config, tmp_path / "seq", *extra, "--members", "2", "--seed", "3", "--jobs", "1")
    losses = lambda r: [h["loss"] for m in r["member_runs"] for h in m["history"]]  # noqa: E731
    assert losses(seq) == pytest.approx(losses(report), rel=1e-4)
    assert seq["valid_ndcg@10"] == pytest.approx(report["valid_ndcg@10"], abs=1e-6)
    # Bit for bit: a member trains with the same torch threads in a worker or in this process.
    assert head_gap(tmp_path / "seq", tmp_path / "ens") < 1e-6

    # The merged model's valid NDCG@10 is the ensemble's: the members' best weights, stacked.
    settings = load_settings(config)
    data = load_dataset(settings, "social-video")
    feats = catalogue_features(data.catalogues, settings.var_dir / "features" / data.name)
    d = Direction("social", "video")
    new = np.array(sorted(data.catalogues["video"].index()[i] for i in report["new_items"]["items"]))
    hist, rel = restrict(*pairs_of(user_rows(data.split("valid"), data.platforms, {}), d), new)
    best = [s["best_state"] for s in states]
    scores = concatenated_scores([b["head"].numpy() for b in best],
                                 [b["maps.social__video"].numpy() for b in best],
                                 feats["social"], feats["video"], hist)
    want = ndcg_of(mask_to(scores, new).__getitem__, len(hist), rel)["ndcg@10"]
    assert report["valid_ndcg@10"]["social->video/new-items"] == pytest.approx(want, abs=1e-6)



def test_cached_lower_states_and_upper_layers_equal_the_whole_backbone() -> None:
    encoder = InterestEncoder.load(None)
    titles = ["Keurig K-Cup coffee maker, single serve", "organic green tea", "Stainless steel 3-quart pot",
              "Dark chocolate bar with sea salt and almonds, 12 pack", "oats"]
    whole = embed_titles(encoder, titles)
    for lower in (4, 5):
        states = finetune.lower_states(encoder.backbone, titles, lower)
        upper = finetune.UpperLayers(encoder.backbone, lower).eval()
        with torch.no_grad():
            pooled = upper(*states.batch(torch.arange(len(titles)))).numpy()
        assert np.abs(pooled - whole).max() < 2e-3  # the cache holds float16 states
        assert states.offsets[-1] == len(states.states)


def test_finetune_tunes_only_the_top_layers_and_writes_a_checkpoint_make_engine_reads(
        config: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    assert finetune.main(["--config", str(config), "--dataset", "social-video", "--from", str(checkpoint),
                          "--out", str(out), "--tune-layers", "1", "--epochs", "2", "--batch", "16",
                          "--items-per-step", "8", "--backbone-lr", "1e-3", "--categories", "6",
                          "--within-platform", "12"]) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2] and report["lower_layers_cached"] == 5
    assert report["within_platform_examples"] == 12
    assert (out / TUNED_LAYERS).exists() and (out / ASSETS_FILE).exists()
    assert not (out / "config.json").exists(), "only the tuned layer is written, not the backbone"
    assert torch.load(out / TUNED_LAYERS)["first"] == 5
    tuned, pretrained = InterestEncoder.load(out), InterestEncoder.load(None)
    layers = [(a.state_dict(), b.state_dict()) for a, b in zip(
        tuned.backbone.encoder.layer, pretrained.backbone.encoder.layer)]  # type: ignore[union-attr,arg-type]
    assert all(torch.equal(a[k], b[k]) for a, b in layers[:5] for k in a)  # frozen below
    if report["best_epoch"] > 0:
        assert any(not torch.equal(layers[5][0][k], layers[5][1][k]) for k in layers[5][0])
    # The exported encoder embeds a title as training did: cached states, tuned layer, head.
    titles = ["a title the catalogue never had", "another one, 12 pack"]
    states = finetune.lower_states(pretrained.backbone, titles, 5)
    upper = finetune.UpperLayers(tuned.backbone, 5).eval()
    head = torch.load(out / "interest_head.pt")["weight"]
    with torch.no_grad():
        trained = torch.nn.functional.normalize(upper(*states.batch(torch.arange(2))) @ head.T, dim=-1)
    assert np.abs(embed_titles(tuned, titles) - trained.numpy()).max() < 2e-3
    # make eval scores such a checkpoint through its tuned encoder, not the frozen features
    data = load_dataset(load_settings(config), "social-video")
    frozen = {p: np.zeros((len(c), 384), np.float32) for p, c in data.catalogues.items()}
    items = evaluate.head_embeddings(frozen, out, data, tmp_path / "cache")
    assert np.abs(items["video"] - embed_titles(tuned, data.catalogues["video"].titles)).max() < 1e-5


def test_finetune_control_trains_the_same_way_with_the_backbone_frozen(
        config: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "control"
    assert finetune.main(["--config", str(config), "--dataset", "social-video", "--from", str(checkpoint),
                          "--out", str(out), "--tune-layers", "0", "--epochs", "1", "--batch", "16",
                          "--lr", "0.05", "--categories", "6"]) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["tune_layers"] == 0 and not (out / TUNED_LAYERS).exists()
    assert report["history"][0]["valid_ndcg@10"] == pytest.approx(
        json.loads((checkpoint / "train_report.json").read_text())["valid_ndcg@10"], abs=1e-6)
    if report["best_epoch"] == 1:
        assert head_gap(out, checkpoint) > 0
    else:
        assert head_gap(out, checkpoint) == 0


def test_a_step_of_tuning_reaches_the_tuned_layers_through_the_recomputed_items() -> None:
    encoder = InterestEncoder.load(None)
    titles = {"a": ["green tea", "dark roast coffee beans", "oat flakes"],
              "b": ["tea kettle", "coffee grinder", "cereal bowl", "steel pot"]}
    states = {p: finetune.lower_states(encoder.backbone, t, 5) for p, t in titles.items()}
    d = Direction("a", "b")
    none = {p: np.array([], np.int64) for p in titles}
    model = finetune.TunedMigrationModel(states, finetune.UpperLayers(encoder.backbone, 5), [d], none,
                                         items_per_step=2, seed=0)
    before = {p: t.clone() for p, t in model.features.items()}
    model.loss([(d, [0, 1], [0]), (d, [2], [1, 2])]).backward()  # type: ignore[no-untyped-call]
    grads = [p.grad for p in model.upper.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    assert model.head.grad is not None and not model.fresh  # the spliced rows are let go after the step
    assert all(torch.equal(before[p], model.features[p]) for p in titles)  # the table waits for refresh
