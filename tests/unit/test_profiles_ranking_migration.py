from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interest_core.catalogue import Catalogue
from interest_core.consent import allowed
from interest_core.migration import MigrationMap
from interest_core.privacy import Pseudonymiser
from interest_core.profiles import Profile, ProfileStore
from interest_core.ranking.index import CatalogueIndex


def unit(v: list[float]) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_store_round_trip_and_delete(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    p = Profile("food", np.zeros(3, dtype=np.float32), 0)
    p.add(unit([1, 0, 0]), "A1")
    p.add(unit([0, 1, 0]), "A2")
    p.add(unit([0, 1, 0]), "A2")
    store.save_many([("u1", p)])
    loaded = store.load("u1")["food"]
    assert loaded.events == 3 and loaded.items == ["A1", "A2"]
    assert np.allclose(loaded.vector, unit([1, 2, 0]))
    assert store.load("u2") == {}
    assert store.delete("u1") == ["food"] and store.load("u1") == {} and store.count() == 0


def test_failed_batch_writes_nothing(tmp_path: Path) -> None:
    """A row failing mid-transaction (NOT NULL user key) rolls back the rows before it too."""
    import sqlite3

    store = ProfileStore(tmp_path / "p.sqlite3")
    good = Profile("food", unit([1, 0]), 1)
    with pytest.raises(sqlite3.IntegrityError):
        store.save_many([("u1", good), (None, Profile("food", unit([0, 1]), 1))])  # type: ignore[list-item]
    assert store.count() == 0
    store.save_many([("u1", good)])
    assert store.count() == 1


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


def test_profiles_encrypted_at_rest(tmp_path: Path) -> None:
    import base64
    import os

    from cryptography.exceptions import InvalidTag

    from interest_core.profiles import ProfileCipher

    key = os.urandom(32)
    store = ProfileStore(tmp_path / "p.sqlite3", ProfileCipher(key))
    p = Profile("food", np.array([0.25, 0.5, 0.75], dtype=np.float32), 2, items=["B00SECRETITEM"])
    store.save_many([("u1", p)])
    assert store.load("u1")["food"].items == ["B00SECRETITEM"]
    assert np.allclose(store.load("u1")["food"].vec_sum, p.vec_sum)
    store.close()
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("p.sqlite3*"))
    assert b"B00SECRETITEM" not in raw and p.vec_sum.tobytes() not in raw
    with pytest.raises(InvalidTag):
        ProfileStore(tmp_path / "p.sqlite3", ProfileCipher(os.urandom(32))).load("u1")
    with pytest.raises(ValueError, match="32 bytes"):
        ProfileCipher(base64.b64decode("c2hvcnQ="))


def test_consent_defaults_off_and_is_deleted_with_the_user(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    assert store.consent_rules("u1") == [] and not allowed(store.consent_rules("u1"), "food", "kitchen")
    store.set_consent("u1", True)  # the operator's user-wide default (*, *)
    assert allowed(store.consent_rules("u1"), "food", "kitchen")
    store.delete("u1")
    assert store.consent_rules("u1") == []
