"""Dataset adapters: the real Amazon counts, the planted rejects of the social-video fixture,
registry errors and `make data`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interest_core.catalogue import Catalogue
from interest_core.config import DEFAULT_CONFIG_FILE, ROOT, DatasetConfig, Settings, load_settings
from interest_core.privacy import Pseudonymiser
from interest_core.ranking.assets import RankingAssets
from interest_model import datacheck
from interest_model.corpus import calibration_pool_size, item_popularity, load_catalogue
from interest_model.datasets import (
    DATASET_ADAPTERS,
    UNASSIGNED,
    DatasetAdapter,
    DatasetEvent,
    IngestReport,
    InteractionData,
    Split,
    dataset_adapter,
    load_dataset,
)
from interest_model.datasets.social_video import SocialVideoOptions, split_of
from quantize.catalogue import fallback_popularity

FIXTURES = ROOT / "tests" / "fixtures"
SV = FIXTURES / "social-video"
SV_OPTIONS = {"valid_fraction": 0.15, "test_fraction": 0.15, "seed": 7}


def social_settings(**options: Any) -> Settings:
    entry = DatasetConfig(adapter="social_video", path=Path("social-video"),
                          platforms={"social": "social", "video": "video"}, options=options)
    return load_settings(DEFAULT_CONFIG_FILE, data_dir=FIXTURES, datasets={"social-video": entry})


@pytest.fixture(scope="module")
def amazon() -> InteractionData:
    return load_dataset(load_settings(DEFAULT_CONFIG_FILE), "amazon-food-kitchen")


@pytest.fixture(scope="module")
def social() -> InteractionData:
    return load_dataset(social_settings(**SV_OPTIONS), "social-video")


def test_amazon_matches_the_checked_counts(amazon: InteractionData) -> None:
    assert amazon.platforms == ("food", "kitchen")
    assert {p: len(c) for p, c in amazon.catalogues.items()} == {"food": 8661, "kitchen": 27637}
    expected: dict[Split, tuple[int, int, int]] = {  # users, A events, B events (data README)
        "train": (7501, 45849, 53321), "valid": (960, 8739, 9394), "test": (937, 6447, 9279),
    }
    for split, (users, n_a, n_b) in expected.items():
        both = amazon.overlap(split, "food", "kitchen")
        assert (len(both), sum(len(u.on("food")) for u in both), sum(len(u.on("kitchen")) for u in both)) \
            == (users, n_a, n_b), split
    assert len(amazon.split("train")) == 5472 + 38191 + 7501
    overlap = [u for u in amazon.users if u.on("food") and u.on("kitchen")]
    assert len(overlap) == 9398
    assert len({i for u in overlap for i in u.on("food")}) == 8272
    assert len({i for u in overlap for i in u.on("kitchen")}) == 18605
    report = amazon.report
    assert report.read == report.kept and report.dropped == {} and report.errors == []
    assert report.untitled["food"] == report.untitled["kitchen"] == 0


def test_amazon_titles_cleaned_and_users_pseudonymised(amazon: InteractionData) -> None:
    assert amazon.report.cleaned["food"] > 0 and amazon.report.cleaned["kitchen"] > 0
    assert not any("&amp;" in t for c in amazon.catalogues.values() for t in c.titles)
    first = amazon.users[0]
    assert first.user_key == Pseudonymiser(load_settings().hmac_key.get_secret_value())("train_overlap:1")
    # train_overlap.txt line 1: 24163,35778,1608,521,32812,13551,594,21036,33030,197 (n_A = 8661)
    assert first.on("food") == (1608, 521, 594, 197)
    assert first.on("kitchen") == tuple(i - 8661 for i in (24163, 35778, 32812, 13551, 21036, 33030))


def write_pair(folder: Path, num: str = "2\n1\n") -> Path:
    """A tiny LLMCDSR-format folder: an entity title, an empty title, bad tokens."""
    folder.mkdir()
    files = {"item_set_A.json": {"a1": 0, "a2": 1}, "item_set_B.json": {"b1": 0},
             "text_A.json": {"a1": "Salt &amp;amp; Pepper", "a2": "<br>"}, "text_B.json": {"b1": "Pan"}}
    for name, obj in files.items():
        (folder / name).write_text(json.dumps(obj))
    (folder / "num.txt").write_text(num)
    (folder / "train_overlap.txt").write_text("1\t0,2,1,x,99,\n")
    for name in ("train_A.txt", "train_B.txt", "valid.txt", "test.txt"):
        (folder / name).write_text("")
    return folder


def pair_settings(folder: Path) -> Settings:
    entry = DatasetConfig(adapter="llmcdsr_pair", path=folder, platforms={"A": "food", "B": "kitchen"})
    return load_settings(DEFAULT_CONFIG_FILE, datasets={"tiny": entry})


def test_pair_counts_cleaning_and_bad_tokens(tmp_path: Path) -> None:
    data = load_dataset(pair_settings(write_pair(tmp_path / "tiny")), "tiny")
    assert data.catalogues["food"].titles == ("Salt & Pepper", "a2")  # untitled keeps its id
    r = data.report
    assert (r.cleaned["food"], r.untitled["food"], r.cleaned["kitchen"]) == (2, 1, 0)
    assert r.dropped == {UNASSIGNED: {"malformed line": 1, "unknown item id": 1}}
    assert (r.read["food"], r.kept["food"], r.kept["kitchen"]) == (2, 2, 1)
    (user,) = data.users
    assert user.items == {"food": (0, 1), "kitchen": (0,)} and user.split == "train"


def test_social_every_planted_reason_counted(social: InteractionData) -> None:
    r = social.report
    assert r.dropped == {
        "social": {"malformed line": 3, "unknown event type": 3, "unknown item id": 2, "duplicate": 2},
        "video": {"malformed line": 2, "unknown item id": 2, "watch too short": 4, "duplicate": 1},
    }
    lines = {p: sum(1 for line in (SV / f).read_text().splitlines() if line.strip())
             for p, f in (("social", "social_events.jsonl"), ("video", "watches.csv"))}
    assert r.read == {"social": lines["social"], "video": lines["video"] - 1}  # minus the CSV header
    for p in ("social", "video"):
        assert r.kept[p] + sum(r.dropped[p].values()) == r.read[p]
    assert (r.untitled["social"], r.cleaned["social"], r.cleaned["video"]) == (1, 5, 3)
    assert {p: len(c) for p, c in social.catalogues.items()} == {"social": 48, "video": 48}
    assert len(social.users) == 150


def test_social_splits_are_seeded(social: InteractionData) -> None:
    key = Pseudonymiser(load_settings().hmac_key.get_secret_value())
    opts = SocialVideoOptions.model_validate(SV_OPTIONS)
    by_key = {u.user_key: u for u in social.users}
    for n in range(1, 151):
        user = by_key[key(f"u{n:03d}")]
        assert user.split == (split_of(f"u{n:03d}", opts) if n <= 100 else "train")
        assert bool(user.on("social") and user.on("video")) == (n <= 100)
    assert [len(social.split(s)) for s in ("train", "valid", "test")] == [119, 12, 19]
    again = load_dataset(social_settings(**SV_OPTIONS), "social-video")
    assert [(u.user_key, u.split) for u in again.users] == [(u.user_key, u.split) for u in social.users]
    other = load_dataset(social_settings(**{**SV_OPTIONS, "seed": 8}), "social-video")
    assert {u.user_key: u.split for u in other.users} != {u.user_key: u.split for u in social.users}


def test_social_history_ordered_by_time_and_deduplicated(social: InteractionData) -> None:
    key = Pseudonymiser(load_settings().hmac_key.get_secret_value())
    index = social.catalogues["social"].index()
    raw: dict[str, list[tuple[int, str]]] = {}
    for line in (SV / "social_events.jsonl").read_text().splitlines():
        try:
            e = json.loads(line)
            ts = int(e["ts"])
        except (ValueError, KeyError):
            continue
        if e["action"] in ("like", "comment", "share") and e["post"] in index:
            raw.setdefault(e["user"], []).append((ts, e["post"]))
    repeats = sum(len(ev) - len({p for _, p in ev}) for ev in raw.values())
    assert repeats == social.report.dropped["social"]["duplicate"] == 2
    by_key = {u.user_key: u for u in social.users}
    for user, events in raw.items():
        first_seen = list(dict.fromkeys(post for _, post in sorted(events)))
        history = by_key[key(user)].on("social")
        assert history == tuple(index[p] for p in first_seen), user
        assert len(set(history)) == len(history)
    assert sum(len(u.on("social")) for u in social.users) == social.report.kept["social"]


def test_popularity_counts_training_users_through_the_adapter(social: InteractionData) -> None:
    """The gateway's fallback ranking for platforms of a non-LLMCDSR dataset: training
    interactions per item (valid and test users left out), catalogue_limit applied."""
    platforms = {p: {"adapter": "any", "dataset": "social-video"} for p in ("social", "video")}
    settings = load_settings(DEFAULT_CONFIG_FILE, data_dir=FIXTURES, platforms=platforms,
                             datasets=social_settings(**SV_OPTIONS).datasets)
    popularity = item_popularity(settings)
    for p in ("social", "video"):
        train = np.bincount([i for u in social.split("train") for i in u.on(p)], minlength=48)
        every = np.bincount([i for u in social.users for i in u.on(p)], minlength=48)
        assert popularity[p].dtype == np.float32 and popularity[p].tolist() == train.tolist()
        assert every.sum() > train.sum()
    limited = item_popularity(settings.model_copy(update={"catalogue_limit": 10}))
    assert limited["video"].tolist() == popularity["video"][:10].tolist()
    assert calibration_pool_size(settings) == 48  # 96 titles: half stay unseen for the accuracy gate
    assert calibration_pool_size(load_settings(DEFAULT_CONFIG_FILE)) == 512


def test_installed_popularity_is_the_assets_counts_when_they_know_every_item(social: InteractionData) -> None:
    """`make engine` installs the trained assets' counts (same training users) as the gateway's
    fallback popularity; a platform the assets lack, or know only in part, is counted from its
    dataset."""
    platforms = {p: {"adapter": "any", "dataset": "social-video"} for p in ("social", "video")}
    settings = load_settings(DEFAULT_CONFIG_FILE, data_dir=FIXTURES, platforms=platforms,
                             datasets=social_settings(**SV_OPTIONS).datasets)
    catalogues = {p: social.catalogues[p] for p in ("social", "video")}
    counted = item_popularity(settings)
    planted = np.arange(48, dtype=np.float32)[::-1].copy()  # not the counts: shows which was used
    assets = RankingAssets(item_ids={"social": list(catalogues["social"].item_ids)[::-1]}, migration={},
                           cooccurrence={}, popularity={"social": planted}, blend={})
    served = fallback_popularity(settings, catalogues, assets)
    assert served["social"].tolist() == planted[::-1].tolist(), "reordered to catalogue order"
    assert served["video"].tolist() == counted["video"].tolist()
    assets.item_ids["social"] = assets.item_ids["social"][1:]  # one item unknown to the assets
    assets.popularity["social"] = planted[1:]
    assert fallback_popularity(settings, catalogues, assets)["social"].tolist() == counted["social"].tolist()
    assert fallback_popularity(settings, catalogues, None)["social"].tolist() == counted["social"].tolist()


def test_a_platform_outside_the_datasets_entries_is_refused_by_name() -> None:
    """Every catalogue is read through a `datasets:` entry's adapter; a platform naming a bare
    folder instead says what to configure."""
    platforms = {"food": {"adapter": "amazon_review", "dataset": "amazon-food-kitchen"},
                 "kitchen": {"adapter": "amazon_review", "dataset": "some-llmcdsr-folder"}}
    settings = load_settings(DEFAULT_CONFIG_FILE, platforms=platforms)
    for read in (lambda: load_catalogue(settings, "kitchen"), lambda: item_popularity(settings)):
        with pytest.raises(ValueError, match=r"platform 'kitchen' names the dataset 'some-llmcdsr-folder', "
                                             r"which is not a `datasets:` entry .*amazon-food-kitchen"):
            read()


def test_registry_and_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset adapter 'nope'.*llmcdsr_pair, social_video"):
        dataset_adapter("nope")
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; configured datasets: amazon-food-kitchen"):
        load_dataset(load_settings(DEFAULT_CONFIG_FILE), "nope")
    with pytest.raises(FileNotFoundError, match=r"missing.*make data"):
        load_dataset(load_settings(DEFAULT_CONFIG_FILE, data_dir=tmp_path), "amazon-food-kitchen")
    with pytest.raises(ValueError, match="min_watch_fractoin"):
        load_dataset(social_settings(min_watch_fractoin=0.5), "social-video")


class _SplitFlip(DatasetAdapter):
    """Test adapter: one user whose events disagree on the split."""

    name = "split_flip"

    def catalogues(self, report: IngestReport) -> dict[str, Catalogue]:
        return {"p": Catalogue(platform="p", item_ids=("x", "y"), titles=("X", "Y"))}

    def events(self, report: IngestReport) -> Iterator[DatasetEvent]:
        for order, (item, split) in enumerate((("y", "valid"), ("x", "test"), ("zz", "test"))):
            report.read["p"] += 1
            event = self.make_event(report, {"platform": "p", "user_key": self.pseudonymise("u"),
                                             "item_id": item, "item_text": item.upper(),
                                             "event_type": "view", "order": order, "split": split})
            if event is not None:
                yield event


def test_conflicting_split_keeps_the_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(DATASET_ADAPTERS, _SplitFlip.name, _SplitFlip)
    entry = DatasetConfig(adapter="split_flip", path=tmp_path, platforms={"p": "p"})
    data = load_dataset(load_settings(DEFAULT_CONFIG_FILE, datasets={"f": entry}), "f", hmac_key="k2")
    (user,) = data.users
    assert user.split == "valid" and user.items == {"p": (1, 0)} and user.user_key == Pseudonymiser("k2")("u")
    assert data.report.warnings == {"p": {"conflicting split": 1}}
    assert data.report.dropped == {"p": {"unknown item id": 1}}


def test_datacheck_on_the_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {FIXTURES}\ndatasets:\n  social-video:\n    adapter: social_video\n"
                   "    path: social-video\n    platforms: {social: social, video: video}\n"
                   f"    options: {json.dumps(SV_OPTIONS)}\n")
    assert datacheck.main(["--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "watch too short" in text and "catalogue items" in text
    assert datacheck.main(["--config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["social-video"]
    assert out["platforms"]["video"]["dropped"]["watch too short"] == 4
    assert out["splits"]["valid"] == {"users": 12, "overlap_users": 12}
    cfg.write_text(cfg.read_text().replace("path: social-video", "path: nowhere"))
    assert datacheck.main(["--config", str(cfg)]) == 2
    assert "nowhere is missing" in capsys.readouterr().err


def test_datacheck_fails_when_num_txt_disagrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_pair(tmp_path / "tiny", num="3\n1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"datasets:\n  tiny:\n    adapter: llmcdsr_pair\n    path: {folder}\n"
                   "    platforms: {A: food, B: kitchen}\n")
    assert datacheck.main(["--config", str(cfg)]) == 1
    assert "2 catalogue items but num.txt says 3" in capsys.readouterr().out


def test_the_int8_gate_leaves_out_exactly_the_texts_that_calibrated_the_candidate(tmp_path: Path) -> None:
    """quantize.int8 records its calibration texts beside the model; quantize.validate compares
    on texts outside that record, whatever seed calibrated (before the record, a --seed 3 model
    was gated on texts it had been calibrated on)."""
    from interest_model.corpus import behaviour_texts
    from quantize.calibration import record_path, write_record
    from quantize.validate import held_out_texts

    platforms = {p: {"adapter": "any", "dataset": "social-video"} for p in ("social", "video")}
    settings = load_settings(DEFAULT_CONFIG_FILE, data_dir=FIXTURES, platforms=platforms,
                             datasets=social_settings(**SV_OPTIONS).datasets)
    model = tmp_path / "model.int8-uint8.onnx"
    default_pool = set(behaviour_texts(settings, 48, seed=0))
    seeded = behaviour_texts(settings, 48, seed=3)
    assert set(seeded) != default_pool  # another seed calibrates on other texts
    without_record = held_out_texts(settings, model, 96, seed=1)
    assert not default_pool & set(without_record) and len(without_record) == 48

    write_record(model, seeded, seed=3)
    assert record_path(model).name == "model.int8-uint8.calibration.json"
    gated = held_out_texts(settings, model, 96, seed=1)
    assert not set(seeded) & set(gated), "a calibration text was compared"
    assert len(gated) == 48 and set(gated) | set(seeded) == set(behaviour_texts(settings, 200, seed=0))
