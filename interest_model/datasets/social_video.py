"""Adapter `social_video`: a social app's JSON-lines event log plus a video site's watch CSV.

    social_events.jsonl  {"user", "post", "action": like|comment|share, "ts": epoch ms}
    posts.csv            post_id,caption
    watches.csv          user,video_id,watched_seconds,duration_seconds,ts
    videos.jsonl         {"id", "title", "tags"}

User ids are shared by both platforms. There are no split files: users on both platforms go
to valid/test by a seeded hash of their id, everyone else is train. Timestamps order events.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interest_core.catalogue import Catalogue
from interest_model.datasets.base import (
    DatasetAdapter,
    DatasetEvent,
    IngestReport,
    Split,
    make_catalogue,
)

SOCIAL, VIDEO = "social", "video"
ACTIONS = frozenset({"like", "comment", "share"})


class SocialVideoOptions(BaseModel):
    """`options:` of a social_video dataset entry."""

    model_config = ConfigDict(extra="forbid")

    min_watch_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    valid_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int = 0


class _SocialRow(BaseModel):
    """One line of social_events.jsonl (parsed and type-checked in one step)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    user: str = Field(min_length=1)
    post: str = Field(min_length=1)
    action: str
    ts: int


def split_of(user: str, options: SocialVideoOptions) -> Split:
    """Seeded, stable split of one overlap user: a hash of (seed, user id) in [0, 1)."""
    digest = hashlib.sha256(f"{options.seed}:{user}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < options.valid_fraction:
        return "valid"
    return "test" if u < options.valid_fraction + options.test_fraction else "train"


class SocialVideoAdapter(DatasetAdapter):
    """Posts and videos as catalogues (file order); likes/comments/shares and long-enough watches."""

    name = "social_video"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opts = SocialVideoOptions.model_validate(self.options)
        missing = [k for k in (SOCIAL, VIDEO) if k not in self.platforms]
        if missing:
            raise ValueError(f"{self.name}: `platforms` must map {SOCIAL} and {VIDEO}, missing {missing}")
        self._catalogues: dict[str, Catalogue] | None = None

    def catalogues(self, report: IngestReport) -> dict[str, Catalogue]:
        social, video = self.platforms[SOCIAL], self.platforms[VIDEO]
        posts: dict[str, str] = {}
        with (self.path / "posts.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                self._add(posts, row.get("post_id"), row.get("caption"), social, report)
        videos: dict[str, str] = {}
        with (self.path / "videos.jsonl").open() as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                row = obj if isinstance(obj, dict) else {}
                self._add(videos, row.get("id"), row.get("title"), video, report)
        self._catalogues = {
            social: make_catalogue(social, posts.items(), report),
            video: make_catalogue(video, videos.items(), report),
        }
        return self._catalogues

    @staticmethod
    def _add(into: dict[str, str], item: Any, text: Any, platform: str, report: IngestReport) -> None:
        """One catalogue row; a row without an id or a repeated id is counted, not kept."""
        if not isinstance(item, str | int) or not str(item).strip():
            report.warn(platform, "malformed catalogue row")
        elif str(item) in into:
            report.warn(platform, "duplicate catalogue id")
        else:
            into[str(item)] = text if isinstance(text, str) else ""

    def events(self, report: IngestReport) -> Iterator[DatasetEvent]:
        """Read both logs, then assign splits (needs every user's platforms) and validate."""
        cats = self._catalogues or self.catalogues(IngestReport())
        rows = [*self._social(report, cats), *self._watches(report, cats)]
        on_social = {r["user"] for r in rows if r["platform"] == self.platforms[SOCIAL]}
        on_video = {r["user"] for r in rows if r["platform"] == self.platforms[VIDEO]}
        both = on_social & on_video
        keys: dict[str, str] = {}
        for r in rows:
            user = r.pop("user")
            if user not in keys:
                keys[user] = self.pseudonymise(user)
            r["user_key"] = keys[user]
            r["split"] = split_of(user, self.opts) if user in both else "train"
            event = self.make_event(report, r)
            if event is not None:
                yield event

    def _social(self, report: IngestReport, cats: dict[str, Catalogue]) -> Iterator[dict[str, Any]]:
        platform = self.platforms[SOCIAL]
        texts = dict(zip(cats[platform].item_ids, cats[platform].titles))
        with (self.path / "social_events.jsonl").open() as f:
            for line in f:
                if not line.strip():
                    continue
                report.read[platform] += 1
                try:
                    row = _SocialRow.model_validate_json(line)
                except ValidationError:
                    report.drop(platform, "malformed line")
                    continue
                if row.action not in ACTIONS:
                    report.drop(platform, "unknown event type")
                elif row.post not in texts:
                    report.drop(platform, "unknown item id")
                else:
                    yield {"platform": platform, "user": row.user, "item_id": row.post,
                           "item_text": texts[row.post], "event_type": row.action, "order": row.ts}

    def _watches(self, report: IngestReport, cats: dict[str, Catalogue]) -> Iterator[dict[str, Any]]:
        platform = self.platforms[VIDEO]
        texts = dict(zip(cats[platform].item_ids, cats[platform].titles))
        with (self.path / "watches.csv").open(newline="") as f:
            reader = csv.reader(f)
            next(reader, None)  # header
            for fields in reader:
                if not fields:
                    continue
                report.read[platform] += 1
                try:
                    user, video, watched_s, duration_s, ts_s = (x.strip() for x in fields)
                    watched, duration, ts = float(watched_s), float(duration_s), int(ts_s)
                except ValueError:  # wrong column count or a non-number
                    report.drop(platform, "malformed line")
                    continue
                if not user or duration <= 0 or watched < 0:
                    report.drop(platform, "malformed line")
                elif video not in texts:
                    report.drop(platform, "unknown item id")
                elif watched / duration < self.opts.min_watch_fraction:
                    report.drop(platform, "watch too short")
                else:
                    yield {"platform": platform, "user": user, "item_id": video,
                           "item_text": texts[video], "event_type": "watch", "order": ts}
