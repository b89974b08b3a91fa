"""What every dataset adapter produces: unified events (pydantic), counted rejects, and the
per-platform interaction data that training and evaluation read.

Training, migration and evaluation see only `InteractionData`; a new platform format is a
new adapter module registered in `interest_model.datasets` plus a `datasets:` config entry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from interest_core.catalogue import Catalogue
from interest_core.config import DEFAULT_HMAC_KEY
from interest_core.privacy import Pseudonymiser
from interest_core.text import clean_text

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
UNASSIGNED = "(no platform)"  # report key for records whose platform cannot be told
# DatasetEvent field that failed validation -> drop reason; any other field: "malformed line".
_FIELD_REASONS = {"item_text": "empty item text", "item_id": "unknown item id",
                  "event_type": "unknown event type"}


class DatasetEvent(BaseModel):
    """One interaction after adaptation and cleaning: the unified schema of every platform."""

    model_config = ConfigDict(frozen=True)

    platform: str = Field(min_length=1)
    user_key: str = Field(min_length=1, description="pseudonymous user key (HMAC of the source id)")
    item_id: str = Field(min_length=1)
    item_text: str = Field(min_length=1, description="cleaned item title/caption")
    event_type: str = Field(min_length=1)
    order: int = Field(ge=0, description="position or timestamp; orders one user's events")
    split: Split = "train"


@dataclass
class IngestReport:
    """Per platform: events read, kept, and dropped by reason (each reason counted)."""

    read: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    cleaned: Counter[str] = field(default_factory=Counter)  # texts changed by cleaning
    untitled: Counter[str] = field(default_factory=Counter)  # catalogue items with no text
    warnings: dict[str, Counter[str]] = field(default_factory=dict)  # counted, nothing dropped
    errors: list[str] = field(default_factory=list)  # consistency failures a data check fails on

    def drop(self, platform: str, reason: str) -> None:
        self.dropped.setdefault(platform, Counter())[reason] += 1

    def warn(self, platform: str, reason: str, n: int = 1) -> None:
        self.warnings.setdefault(platform, Counter())[reason] += n

    def as_dict(self) -> dict[str, Any]:
        platforms = sorted(set(self.read) | set(self.kept) | set(self.dropped) | set(self.warnings))
        return {
            p: {"read": self.read[p], "kept": self.kept[p], "cleaned_texts": self.cleaned[p],
                "untitled_items": self.untitled[p],
                "dropped": dict(sorted(self.dropped.get(p, Counter()).items())),
                "warnings": dict(sorted(self.warnings.get(p, Counter()).items()))}
            for p in platforms
        }


@dataclass(frozen=True)
class UserHistory:
    """One user's time-ordered items per platform, as local catalogue indices."""

    user_key: str
    split: Split
    items: dict[str, tuple[int, ...]]

    def on(self, platform: str) -> tuple[int, ...]:
        return self.items.get(platform, ())


@dataclass
class InteractionData:
    """A dataset of two (or more) platforms: catalogues, users by split, and the ingest report."""

    name: str
    platforms: tuple[str, ...]
    catalogues: dict[str, Catalogue]
    users: list[UserHistory]
    report: IngestReport

    def split(self, name: Split) -> list[UserHistory]:
        return [u for u in self.users if u.split == name]

    def overlap(self, name: Split, a: str, b: str) -> list[UserHistory]:
        """Users of `name` split with items on both `a` and `b`."""
        return [u for u in self.users if u.split == name and u.on(a) and u.on(b)]


def make_catalogue(
    platform: str, items: Iterable[tuple[str, str]], report: IngestReport
) -> Catalogue:
    """Catalogue from (item id, raw title) in local-index order; titles cleaned, changes and
    untitled items counted; an untitled item stays, with its id as text."""
    ids: list[str] = []
    titles: list[str] = []
    for item_id, raw in items:
        text = clean_text(raw)
        report.cleaned[platform] += text != raw
        if not text:
            report.untitled[platform] += 1
            text = item_id
        ids.append(item_id)
        titles.append(text)
    return Catalogue(platform=platform, item_ids=tuple(ids), titles=tuple(titles))


_EVENT_LIST = TypeAdapter(list[DatasetEvent])


class DatasetAdapter:
    """Reads one dataset format; subclasses set `name` and implement `events` and `catalogues`."""

    name = "base"

    def __init__(
        self, path: Path, platforms: dict[str, str], options: dict[str, Any],
        *, pseudonymise: Callable[[str], str] | None = None,
    ) -> None:
        self.path = path
        self.platforms = platforms  # adapter-side platform key -> our platform name
        self.options = options
        self.pseudonymise = pseudonymise or Pseudonymiser(DEFAULT_HMAC_KEY)

    def make_event(self, report: IngestReport, raw: dict[str, Any]) -> DatasetEvent | None:
        """Validate one raw record; a failure is counted under a short reason, never raised."""
        try:
            return DatasetEvent.model_validate(raw)
        except ValidationError as err:
            loc = err.errors()[0]["loc"]
            reason = _FIELD_REASONS.get(str(loc[0]) if loc else "", "malformed line")
            report.drop(str(raw.get("platform") or UNASSIGNED), reason)
            return None

    def make_events(self, report: IngestReport, raws: list[dict[str, Any]]) -> list[DatasetEvent]:
        """`make_event` for a batch (one validator call: the fast path of large files)."""
        try:
            return _EVENT_LIST.validate_python(raws)
        except ValidationError:
            return [e for e in (self.make_event(report, r) for r in raws) if e is not None]

    def catalogues(self, report: IngestReport) -> dict[str, Catalogue]:
        raise NotImplementedError

    def events(self, report: IngestReport) -> Iterator[DatasetEvent]:
        raise NotImplementedError
