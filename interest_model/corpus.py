"""Catalogues and popularity of the configured platforms, read through each platform's
`datasets:` entry and its adapter (interest_model.datasets), and LLMCDSR user sequences.

Item ids in sequence files are global: side A owns 0..n_A-1, side B owns n_A.. (local = id - n_A).
Platforms expose items by their real id (ASIN); a catalogue row's position is its local index.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interest_core.catalogue import Catalogue
from interest_core.config import Settings


@dataclass(frozen=True)
class UserSequence:
    """A held-out or training user's time-ordered items, split by side (local indices)."""

    uid: str
    items_a: tuple[int, ...]
    items_b: tuple[int, ...]


def platform_dataset(settings: Settings, name: str) -> str:
    """The `datasets:` entry holding platform `name`; ValueError when it names none."""
    platform = settings.platforms[name]
    if platform.dataset not in settings.datasets:
        raise ValueError(
            f"platform {name!r} names the dataset {platform.dataset!r}, which is not a `datasets:` "
            f"entry of the config ({', '.join(settings.datasets) or 'none configured'}): add one "
            f"with its adapter, folder and platforms (e.g. adapter: llmcdsr_pair, platforms: "
            f"{{A: {name}, ...}} for an LLMCDSR folder)")
    return platform.dataset


def side_size(folder: Path, side: str) -> int:
    n_a, n_b = (int(x) for x in (folder / "num.txt").read_text().split())
    return n_a if side == "A" else n_b


def load_catalogue(settings: Settings, name: str) -> Catalogue:
    """Catalogue of platform `name` in local-index order, titles cleaned, sliced by
    catalogue_limit, read by the adapter of the platform's `datasets:` entry."""
    catalogue = _adapter_catalogue(settings, platform_dataset(settings, name), name)
    if settings.catalogue_limit is None:
        return catalogue
    limit = settings.catalogue_limit
    return Catalogue(name, catalogue.item_ids[:limit], catalogue.titles[:limit])


def _adapter_catalogue(settings: Settings, dataset: str, name: str) -> Catalogue:
    from interest_model.datasets import IngestReport, dataset_adapter

    config = settings.datasets[dataset]
    folder = config.folder(settings.data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} is missing (run `make data`)")
    adapter = dataset_adapter(config.adapter)(folder, dict(config.platforms), dict(config.options))
    catalogues = adapter.catalogues(IngestReport())
    if name not in catalogues:
        raise ValueError(f"dataset {dataset!r} has no platform {name!r}; it has {', '.join(catalogues)}")
    return catalogues[name]


def load_sequences(folder: Path, filename: str) -> list[UserSequence]:
    """Parse `uid<TAB>id,id,...` lines into per-side local item lists (order kept)."""
    n_a = side_size(folder, "A")
    users: list[UserSequence] = []
    for line in (folder / filename).read_text().splitlines():
        if not line.strip():
            continue
        uid, _, items = line.partition("\t")
        ids = [int(x) for x in items.split(",") if x]
        users.append(
            UserSequence(
                uid=uid,
                items_a=tuple(i for i in ids if i < n_a),
                items_b=tuple(i - n_a for i in ids if i >= n_a),
            )
        )
    return users


def item_popularity(settings: Settings, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Training interactions per catalogue item of the configured platforms `names` (default:
    all), float32 [n] in local-index order (catalogue_limit applied): the non-personalised
    fallback ranking. Counts only training users, never valid/test, read through each
    `datasets:` entry's adapter (each dataset once)."""
    from interest_model.datasets import InteractionData, load_dataset

    loaded: dict[str, InteractionData] = {}
    out: dict[str, np.ndarray] = {}
    for name in settings.platforms if names is None else names:
        dataset = platform_dataset(settings, name)
        if dataset not in loaded:
            loaded[dataset] = load_dataset(settings, dataset)
        data = loaded[dataset]
        if name not in data.catalogues:
            raise ValueError(f"dataset {dataset!r} has no platform {name!r}; "
                             f"it has {', '.join(data.catalogues)}")
        items = [i for u in data.split("train") for i in u.on(name)]
        counts = np.bincount(np.asarray(items, dtype=np.int64), minlength=len(data.catalogues[name]))
        out[name] = np.asarray(counts[: settings.catalogue_limit], dtype=np.float32)
    return out


def behaviour_texts(settings: Settings, n: int, seed: int = 0) -> list[str]:
    """`n` real behaviour texts (item titles from every platform), seeded sample."""
    texts: list[str] = []
    for name in settings.platforms:
        texts.extend(load_catalogue(settings, name).titles)
    rng = random.Random(seed)
    rng.shuffle(texts)
    return texts[:n]


CALIBRATION_POOL = 512  # INT8 calibrates on at most the first 512 texts of a seeded sample
HELD_OUT_TEXTS = 256  # texts the accuracy gate wants from outside that pool


def calibration_pool_size(settings: Settings) -> int:
    """How many texts of a seeded `behaviour_texts` sample INT8 calibration may draw from:
    512, or half of the configured platforms' titles when they are fewer than 512 + 256 (the
    social-video fixture has 96), so that quantize.validate still compares on unseen texts."""
    total = sum(len(load_catalogue(settings, name)) for name in settings.platforms)
    return CALIBRATION_POOL if total >= CALIBRATION_POOL + HELD_OUT_TEXTS else total // 2
