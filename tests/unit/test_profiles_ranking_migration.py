from __future__ import annotations

import numpy as np
import pytest

from interest_core.catalogue import Catalogue
from interest_core.migration import MigrationMap
from interest_core.privacy import Pseudonymiser
from interest_core.ranking.index import CatalogueIndex


def unit(v: list[float]) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_top_k_excludes_owned_and_is_sorted_unique() -> None:
    cat = Catalogue("kitchen", ("a", "b", "c", "d"), ("A", "B", "C", "D"))
    emb = np.stack([unit([1, 0]), unit([0.9, 0.1]), unit([0, 1]), unit([0.7, 0.3])])
    index = CatalogueIndex(cat, emb)
    ranked = index.top_k(unit([1, 0]), 3, exclude=["a", "unknown"])
    assert [r.item_id for r in ranked] == ["b", "d", "c"]
    assert [r.title for r in ranked] == ["B", "D", "C"]
    assert len(index.top_k(unit([1, 0]), 10, exclude=["a"])) == 3
    assert index.top_k(unit([1, 0]), 2, exclude=["a", "b", "c", "d"]) == []


def test_migration_identity_and_learned() -> None:
    ident = MigrationMap(2)
    assert ident.kind("food", "kitchen") == "identity"
    swap = MigrationMap(2, {("food", "kitchen"): np.array([[0, 1], [1, 0]], dtype=np.float32)})
    assert np.allclose(swap.apply(unit([1, 0]), "food", "kitchen"), [0, 1])
    blended = swap.migrate({"food": (unit([1, 0]), 3), "kitchen": (unit([1, 0]), 1)}, "kitchen")
    assert np.allclose(blended, unit([1, 3]))
    with pytest.raises(ValueError, match="shape"):
        MigrationMap(3, {("a", "b"): np.eye(2)})


def test_pseudonymiser_is_keyed_and_stable() -> None:
    a, b = Pseudonymiser("k1"), Pseudonymiser("k2")
    assert a("alice") == a("alice") != a("bob")
    assert a("alice") != b("alice") and len(a("alice")) == 64 and "alice" not in a("alice")
