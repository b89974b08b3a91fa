"""A platform's catalogue as the serving side sees it: item ids and titles in local-index order,
and the files `make engine` installs beside the model so the gateway serves it as installed.

Per platform, two files in the model directory (names in interest_core.contract): a JSON of
item ids, titles and popularity, and the item embeddings float32 [N, D] as .npy, computed by
the installed model; a large catalogue also gets a nearest-neighbour index over the embeddings
(interest_core.ranking.ann). VERSION.json records each file's digest; a file that does not
match it was not installed with the served model and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import overload

import numpy as np

from interest_core.contract import CATALOGUE_EMBEDDINGS, CATALOGUE_INDEX, CATALOGUE_ITEMS, file_digest


@dataclass(frozen=True)
class Catalogue:
    """One platform's items: item_ids[i] and titles[i] describe local item i (tuples, or
    `Prefix` views of a live catalogue's lists)."""

    platform: str
    item_ids: Sequence[str]
    titles: Sequence[str]

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}


class Prefix(Sequence[str]):
    """The first `n` entries of a list, without copying them: valid for as long as the list's
    first `n` entries are not replaced (it may grow). A live catalogue's snapshot views its id
    and title lists this way (interest_core.live_catalogue): at 10^6 items two tuple copies per
    catalogue change cost about 20 ms, and freeing the last snapshot's another 7-16 ms, all
    under the interpreter lock (docs/catalogue.md)."""

    __slots__ = ("items", "n")

    def __init__(self, items: list[str], n: int) -> None:
        if not 0 <= n <= len(items):
            raise ValueError(f"a prefix of {n} entries of a list of {len(items)}")
        self.items = items
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...

    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        if isinstance(i, slice):
            return tuple(self.items[j] for j in range(*i.indices(self.n)))
        if not -self.n <= i < self.n:
            raise IndexError(f"position {i} of a catalogue of {self.n} items")
        return self.items[i % self.n]

    def __iter__(self) -> Iterator[str]:
        return islice(self.items, self.n)

    def extends(self, other: Sequence[str]) -> bool:
        """Whether `other` is a view of the same list no longer than this one: then its entries
        are this one's first len(other) (the list is never changed in place while viewed)."""
        return isinstance(other, Prefix) and other.items is self.items and other.n <= self.n


class CatalogueNotInstalled(RuntimeError):
    """The installed catalogue files are missing, altered, or do not fit each other."""


@dataclass(frozen=True)
class InstalledCatalogue:
    """What the gateway ranks a platform with: its catalogue, the installed model's embedding of
    each title (float32 [N, D], unit rows) and training interactions per item (float32 [N],
    the non-personalised fallback ranking)."""

    catalogue: Catalogue
    embeddings: np.ndarray
    popularity: np.ndarray
    index_path: Path | None = None  # its nearest-neighbour index, when `make engine` built one

    def __post_init__(self) -> None:
        n = len(self.catalogue)
        if len(self.catalogue.titles) != n or self.embeddings.ndim != 2 or len(self.embeddings) != n \
                or self.popularity.shape != (n,):
            raise CatalogueNotInstalled(
                f"catalogue {self.catalogue.platform}: {n} ids, {len(self.catalogue.titles)} titles, "
                f"embeddings {self.embeddings.shape} and popularity {self.popularity.shape} do not match")

    def reordered(self, order: np.ndarray) -> InstalledCatalogue:
        """The same items, item j of the result being item order[j] of this one (`order` a
        permutation of the positions)."""
        if not np.array_equal(np.sort(order), np.arange(len(self.catalogue))):
            raise ValueError(f"catalogue {self.catalogue.platform}: the order is not a permutation of its "
                             f"{len(self.catalogue)} positions")
        c = self.catalogue
        return InstalledCatalogue(Catalogue(c.platform, tuple(c.item_ids[i] for i in order),
                                            tuple(c.titles[i] for i in order)),
                                  np.asarray(self.embeddings)[order], self.popularity[order], self.index_path)

    def head(self, limit: int | None) -> InstalledCatalogue:
        """The first `limit` items (all when None): settings.catalogue_limit."""
        if limit is None or limit >= len(self.catalogue):
            return self
        c = self.catalogue
        return InstalledCatalogue(Catalogue(c.platform, c.item_ids[:limit], c.titles[:limit]),
                                  self.embeddings[:limit], self.popularity[:limit])  # no index: it holds all


def catalogue_paths(model_dir: Path, platform: str) -> tuple[Path, Path]:
    """(items JSON, embeddings .npy) of `platform` in the model directory."""
    return (model_dir / CATALOGUE_ITEMS.format(platform=platform),
            model_dir / CATALOGUE_EMBEDDINGS.format(platform=platform))


def index_path(model_dir: Path, platform: str) -> Path:
    return model_dir / CATALOGUE_INDEX.format(platform=platform)


IndexWriter = Callable[[np.ndarray, Path], tuple[dict[str, object], np.ndarray]]


def write_installed(model_dir: Path, installed: InstalledCatalogue,
                    index: IndexWriter | None = None) -> dict[str, object]:
    """Write one platform's catalogue files, and its nearest-neighbour index when given
    `index(embeddings, path)`, which writes it there and returns (its description, the order
    of its ids: id i is row order[i]; interest_core.ranking.ann.store_index_in_locality_order).
    The catalogue is then written in the index's order, so that its positions are the index's
    ids. Returns the VERSION.json entry (item count, each file's digest, the index's
    description)."""
    indexed = index_path(model_dir, installed.catalogue.platform)
    described: dict[str, object] | None = None
    if index is not None:
        described, order = index(installed.embeddings, indexed)
        installed = installed.reordered(order)
    items_path, embeddings_path = catalogue_paths(model_dir, installed.catalogue.platform)
    items = {"platform": installed.catalogue.platform, "item_ids": list(installed.catalogue.item_ids),
             "titles": list(installed.catalogue.titles),
             "popularity": [float(x) for x in installed.popularity.astype(np.float32)]}
    items_path.write_text(json.dumps(items, ensure_ascii=False))
    np.save(embeddings_path, np.ascontiguousarray(installed.embeddings, dtype=np.float32))
    entry: dict[str, object] = {
        "items": len(installed.catalogue), "dim": int(installed.embeddings.shape[1]),
        "items_digest": file_digest(items_path), "embeddings_digest": file_digest(embeddings_path)}
    if described is not None:
        entry["index"] = {**described, "digest": file_digest(indexed)}
    return entry


def read_installed(model_dir: Path, platform: str, version: Mapping[str, object],
                   limit: int | None = None) -> InstalledCatalogue:
    """The catalogue of `platform` installed in `model_dir`, checked against the digests that
    `version` (its VERSION.json) records, first `limit` items. The embeddings are mapped
    read-only from the file. Raises CatalogueNotInstalled saying what is wrong."""
    entries = version.get("catalogues")
    entry = entries.get(platform) if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        raise CatalogueNotInstalled(f"the model installed in {model_dir} has no catalogue of platform "
                                    f"{platform!r} (VERSION.json lists none)")
    items_path, embeddings_path = catalogue_paths(model_dir, platform)
    for path, key in ((items_path, "items_digest"), (embeddings_path, "embeddings_digest")):
        if not path.exists():
            raise CatalogueNotInstalled(f"{path} is missing")
        if file_digest(path) != entry.get(key):
            raise CatalogueNotInstalled(f"{path} does not match the digest VERSION.json records for it "
                                        f"(changed since it was installed)")
    indexed: Path | None = None
    if isinstance(entry.get("index"), dict):
        indexed = index_path(model_dir, platform)
        if not indexed.exists():
            raise CatalogueNotInstalled(f"{indexed} is missing (VERSION.json records an index)")
        if file_digest(indexed) != entry["index"].get("digest"):
            raise CatalogueNotInstalled(f"{indexed} does not match the digest VERSION.json records for it "
                                        f"(changed since it was installed)")
    items = json.loads(items_path.read_text())
    embeddings = np.asarray(np.load(embeddings_path, mmap_mode="r"))
    if embeddings.dtype != np.float32:
        raise CatalogueNotInstalled(f"{embeddings_path} holds {embeddings.dtype}, not float32")
    dim = version.get("dim")
    if dim is not None and embeddings.shape[1:] != (dim,):
        raise CatalogueNotInstalled(f"{embeddings_path} holds embeddings of shape {embeddings.shape}, "
                                    f"but the installed model embeds into {dim} dimensions")
    catalogue = Catalogue(platform, tuple(items["item_ids"]), tuple(items["titles"]))
    popularity = np.asarray(items["popularity"], dtype=np.float32)
    return InstalledCatalogue(catalogue, embeddings, popularity, indexed).head(limit)
