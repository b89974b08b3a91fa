"""Dataset adapters by name, and `load_dataset`: one configured dataset -> `InteractionData`.

Adapters stream validated `DatasetEvent`s; this module maps item ids to catalogue indices,
drops repeats, settles one split per user and builds each user's ordered history.
"""

from __future__ import annotations

from interest_core.config import Settings
from interest_core.privacy import Pseudonymiser
from interest_model.datasets.base import (
    SPLITS,
    UNASSIGNED,
    DatasetAdapter,
    DatasetEvent,
    IngestReport,
    InteractionData,
    Split,
    UserHistory,
)
from interest_model.datasets.llmcdsr_pair import LlmcdsrPairAdapter
from interest_model.datasets.social_video import SocialVideoAdapter

__all__ = [
    "DATASET_ADAPTERS", "SPLITS", "UNASSIGNED", "DatasetAdapter", "DatasetEvent", "IngestReport",
    "InteractionData", "Split", "UserHistory", "dataset_adapter", "load_dataset",
]

DATASET_ADAPTERS: dict[str, type[DatasetAdapter]] = {
    cls.name: cls for cls in (LlmcdsrPairAdapter, SocialVideoAdapter)
}


def dataset_adapter(name: str) -> type[DatasetAdapter]:
    """The adapter class registered under `name`."""
    try:
        return DATASET_ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(DATASET_ADAPTERS))
        raise ValueError(f"unknown dataset adapter {name!r}; known adapters: {known}") from None


def load_dataset(settings: Settings, name: str, hmac_key: str | None = None) -> InteractionData:
    """Read dataset `name` of `settings.datasets` with its adapter; user ids pseudonymised with
    `hmac_key` (default settings.hmac_key). Bad records are counted in the report, never raised."""
    if name not in settings.datasets:
        known = ", ".join(sorted(settings.datasets)) or "(none configured)"
        raise ValueError(f"unknown dataset {name!r}; configured datasets: {known}")
    config = settings.datasets[name]
    folder = config.folder(settings.data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset {name!r}: folder {folder} is missing (looked under data_dir={settings.data_dir}; "
            "put the data there and run `make data`)"
        )
    key = hmac_key or settings.hmac_key.get_secret_value()
    adapter = dataset_adapter(config.adapter)(
        folder, dict(config.platforms), dict(config.options), pseudonymise=Pseudonymiser(key)
    )
    report = IngestReport()
    catalogues = adapter.catalogues(report)
    platforms = tuple(dict.fromkeys(config.platforms.values()))
    index = {p: catalogues[p].index() for p in platforms}

    splits: dict[str, Split] = {}
    conflicting: set[str] = set()
    rows: dict[str, dict[str, list[tuple[int, int, int]]]] = {}  # user -> platform -> rows
    for seq, event in enumerate(adapter.events(report)):
        local = index.get(event.platform, {}).get(event.item_id)
        if local is None:
            report.drop(event.platform, "unknown item id")
            continue
        first = splits.setdefault(event.user_key, event.split)
        if first != event.split and event.user_key not in conflicting:
            conflicting.add(event.user_key)
            report.warn(event.platform, "conflicting split")
        rows.setdefault(event.user_key, {}).setdefault(event.platform, []).append(
            (event.order, seq, local)
        )

    users = [
        UserHistory(user_key=user, split=splits[user],
                    items={p: _ordered_unique(p, r, report) for p, r in by_platform.items()})
        for user, by_platform in rows.items()
    ]
    return InteractionData(name=name, platforms=platforms, catalogues=catalogues,
                           users=users, report=report)


def _ordered_unique(platform: str, rows: list[tuple[int, int, int]], report: IngestReport) -> tuple[int, ...]:
    """Items by (order, stream position); a repeated item keeps its earliest occurrence."""
    seen: set[int] = set()
    items: list[int] = []
    for _, _, local in sorted(rows):
        if local in seen:
            report.drop(platform, "duplicate")
        else:
            seen.add(local)
            items.append(local)
    report.kept[platform] += len(items)
    return tuple(items)
