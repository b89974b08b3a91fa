"""Interest category names a person would recognise: class-based TF-IDF over each category's
titles, never units, pack sizes, materials or numbers (interest_model/categories.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from interest_core.config import ROOT
from interest_core.contract import ASSETS_FILE
from interest_core.ranking.assets import RankingAssets
from interest_model.categories import MATERIALS, UNITS, name_clusters

CHECKPOINTS = sorted(p for p in (ROOT / "models").iterdir() if (p / ASSETS_FILE).exists())


def not_an_interest(name: str) -> list[str]:
    """The words of a category name that are units, pack sizes, materials or numbers."""
    return [w for w in name.split(" / ") if w in UNITS or w in MATERIALS or re.search(r"\d", w)]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_no_committed_category_name_is_made_of_units_numbers_or_pack_sizes(checkpoint: Path) -> None:
    names = RankingAssets.load(checkpoint / ASSETS_FILE).category_names
    assert names and len(set(names)) == len(names)
    assert {name: not_an_interest(name) for name in names if not_an_interest(name)} == {}


def test_names_are_the_distinctive_terms_not_units_or_counts() -> None:
    titles = [
        "Green Tea Bags, 100 Count", "Loose Leaf Green Tea, 16 oz Bag", "Matcha Green Tea Powder 1 lb",
        "Jasmine Tea, Pack of 6", "Oolong Tea 2 Pound Bag",  # tea, in units and packs
        "Stainless Steel Frying Pan, 12 inch", "Nonstick Frying Pan Set, 3 Piece",
        "Cast Iron Skillet Pan, 10 inch", "Ceramic Nonstick Saute Pan, 8 inch",  # pans
    ]
    labels = np.array([0] * 5 + [1] * 4)
    names = name_clusters(titles, labels, 2)
    assert names[0].startswith("tea") and names[1].startswith("pan"), names
    assert not any(not_an_interest(n) for n in names), names
    assert "bags" not in names[0] and "count" not in names[0] and "steel" not in names[1]


def test_a_plural_and_its_singular_are_one_term() -> None:
    titles = ["Granola Bars", "Protein Bars", "Granola Bar, Honey", "Chocolate Bar", "Oat Bars",
              "Kettle", "Tea Kettle", "Electric Kettle"]
    names = name_clusters(titles, np.array([0] * 5 + [1] * 3), 2)
    assert names[0].split(" / ").count("bar") + names[0].split(" / ").count("bars") == 1, names
