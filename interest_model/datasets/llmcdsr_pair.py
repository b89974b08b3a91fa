"""Adapter `llmcdsr_pair`: the LLMCDSR two-domain Amazon format (datasets/amazon-food-kitchen).

Sequence files hold `uid<TAB>id,id,...` with global item ids: side A owns 0..n_A-1, side B
owns n_A..n_A+n_B-1. Uids restart in each file, so a user is keyed on `<file>:<uid>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from interest_core.catalogue import Catalogue
from interest_model.datasets.base import (
    UNASSIGNED,
    DatasetAdapter,
    DatasetEvent,
    IngestReport,
    Split,
    make_catalogue,
)

SIDES = ("A", "B")
FILES: tuple[tuple[str, Split], ...] = (
    ("train_overlap.txt", "train"), ("train_A.txt", "train"), ("train_B.txt", "train"),
    ("valid.txt", "valid"), ("test.txt", "test"),
)


class PairOptions(BaseModel):
    """This format has no options; the model rejects typos in a `datasets:` entry."""

    model_config = ConfigDict(extra="forbid")


class LlmcdsrPairAdapter(DatasetAdapter):
    """Reads item_set/text JSON catalogues and the five sequence files; order = position in line."""

    name = "llmcdsr_pair"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        PairOptions.model_validate(self.options)
        missing = [s for s in SIDES if s not in self.platforms]
        if missing:
            raise ValueError(f"{self.name}: `platforms` must map sides A and B, missing {missing}")
        self._catalogues: dict[str, Catalogue] | None = None

    def catalogues(self, report: IngestReport) -> dict[str, Catalogue]:
        """Both catalogues in local-index order; sizes are checked against num.txt."""
        out: dict[str, Catalogue] = {}
        for side in SIDES:
            platform = self.platforms[side]
            index: dict[str, int] = json.loads((self.path / f"item_set_{side}.json").read_text())
            texts: dict[str, str] = json.loads((self.path / f"text_{side}.json").read_text())
            ordered = sorted(index.items(), key=lambda kv: kv[1])
            if [i for _, i in ordered] != list(range(len(ordered))):
                raise ValueError(f"{self.path}/item_set_{side}.json: local indices are not 0..n-1")
            missing_text = sum(asin not in texts for asin, _ in ordered)
            if missing_text:
                report.warn(platform, "item missing from text file", missing_text)
            out[platform] = make_catalogue(
                platform, ((asin, texts.get(asin, "")) for asin, _ in ordered), report
            )
        self._check_num(out, report)
        self._catalogues = out
        return out

    def _check_num(self, catalogues: dict[str, Catalogue], report: IngestReport) -> None:
        """The old `make data` check: num.txt's item counts equal the catalogue sizes."""
        num = self.path / "num.txt"
        if not num.exists():
            report.errors.append(f"{num} is missing")
            return
        expected = num.read_text().split()
        for side, want in zip(SIDES, expected):
            have = len(catalogues[self.platforms[side]])
            if str(have) != want:
                report.errors.append(f"side {side}: {have} catalogue items but num.txt says {want}")

    def events(self, report: IngestReport) -> Iterator[DatasetEvent]:
        """Every (user, item) of the five files; a bad token drops that event only."""
        cats = self._catalogues or self.catalogues(IngestReport())
        for filename, split in FILES:
            path = self.path / filename
            if not path.exists():
                report.errors.append(f"{path} is missing")
                continue
            with path.open() as lines:
                for line in lines:
                    if not line.strip():
                        continue
                    uid, tab, items = line.rstrip("\n").partition("\t")
                    if not tab or not uid.strip():
                        report.read[UNASSIGNED] += 1
                        report.drop(UNASSIGNED, "malformed line")
                        continue
                    user_key = self.pseudonymise(f"{path.stem}:{uid.strip()}")
                    raws = self._line(items, user_key, split, cats, report)
                    report.read.update(r["platform"] for r in raws)
                    yield from self.make_events(report, raws)

    def _line(
        self, items: str, user_key: str, split: Split, cats: dict[str, Catalogue], report: IngestReport
    ) -> list[dict[str, Any]]:
        """Raw event dicts of one sequence; order = position in the line."""
        plat_a, plat_b = self.platforms["A"], self.platforms["B"]
        cat_a, cat_b = cats[plat_a], cats[plat_b]
        n_a, n_all = len(cat_a), len(cat_a) + len(cat_b)
        raws: list[dict[str, Any]] = []
        for pos, token in enumerate(items.split(",")):
            if not token.strip():
                continue  # trailing or doubled comma: nothing to read
            try:
                gid = int(token)
            except ValueError:
                report.read[UNASSIGNED] += 1
                report.drop(UNASSIGNED, "malformed line")
                continue
            if 0 <= gid < n_a:
                platform, cat, local = plat_a, cat_a, gid
            elif n_a <= gid < n_all:
                platform, cat, local = plat_b, cat_b, gid - n_a
            else:
                report.read[UNASSIGNED] += 1
                report.drop(UNASSIGNED, "unknown item id")
                continue
            raws.append({
                "platform": platform, "user_key": user_key, "item_id": cat.item_ids[local],
                "item_text": cat.titles[local], "event_type": "review", "order": pos, "split": split,
            })
        return raws
