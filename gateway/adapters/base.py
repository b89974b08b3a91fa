"""What every adapter checks: user id, event type, item id or text, text size; then it
cleans and scrubs the text and pseudonymises the user."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from gateway.proto.interest.v1 import gateway_pb2 as pb
from interest_core.errors import InvalidInput
from interest_core.events import UnifiedEvent
from interest_core.text import clean_text, scrub_pii

MAX_USER_ID = 128
MAX_ITEM_ID = 128


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter needs from the gateway: limits, the catalogue titles, the pseudonymiser."""

    platform: str
    event_types: tuple[str, ...]
    max_text_chars: int
    titles: Mapping[str, str]
    pseudonymise: Callable[[str], str]


class PlatformAdapter:
    """Base adapter; subclasses set `name` and what their item ids look like (`id_kind`,
    `id_pattern`, `id_rule`), or override `check_item_id`. Event types come from the
    platform's config entry (AdapterContext.event_types)."""

    name = "base"
    id_kind: ClassVar[str] = "item"  # what an item id names, in error messages
    id_pattern: ClassVar[re.Pattern[str] | None] = None  # None: any id up to MAX_ITEM_ID
    id_rule: ClassVar[str] = ""  # id_pattern in words

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def check_item_id(self, item_id: str) -> None:
        if len(item_id) > MAX_ITEM_ID:
            raise InvalidInput(f"item_id longer than {MAX_ITEM_ID} characters")
        if self.id_pattern is not None and not self.id_pattern.match(item_id):
            raise InvalidInput(f"item_id {item_id[:40]!r} is not a {self.id_kind} id ({self.id_rule})")

    def catalogue_text(self, item_id: str) -> str | None:
        """The text embedded for a catalogue item sent without item_text (our own title: nothing
        to scrub); None when the item is not in this platform's catalogue."""
        title = self.ctx.titles.get(item_id)
        return None if title is None else clean_text(title)

    def adapt_all(self, events: Sequence[pb.BehaviorEvent], require_user: bool = True
                  ) -> tuple[list[UnifiedEvent], dict[int, str]]:
        """Every event of a request, in order: the valid ones converted, and what was wrong with
        each of the others, by its index in the request."""
        good: list[UnifiedEvent] = []
        bad: dict[int, str] = {}
        for i, event in enumerate(events):
            try:
                good.append(self.adapt(event, index=i, require_user=require_user))
            except InvalidInput as exc:
                bad[i] = str(exc)
        return good, bad

    def adapt(self, event: pb.BehaviorEvent, index: int = 0, require_user: bool = True) -> UnifiedEvent:
        """Validate and convert one event; raises InvalidInput saying what is wrong with it."""
        ctx = self.ctx
        user_id = event.user_id.strip()
        if require_user and not user_id:
            raise InvalidInput("user_id is empty")
        if len(user_id) > MAX_USER_ID:
            raise InvalidInput(f"user_id longer than {MAX_USER_ID} characters")
        event_type = event.event_type.strip().lower()
        if event_type not in ctx.event_types:
            raise InvalidInput(
                f"event_type {event.event_type!r} is not one of {', '.join(ctx.event_types)} "
                f"for platform {ctx.platform!r}"
            )
        item_id = event.item_id.strip()
        if item_id:
            self.check_item_id(item_id)
        if len(event.item_text) > ctx.max_text_chars:
            raise InvalidInput(f"item_text longer than {ctx.max_text_chars} characters")
        if event.timestamp_ms < 0 or event.position < 0:
            raise InvalidInput("timestamp_ms and position must not be negative")
        text = scrub_pii(clean_text(event.item_text))  # free text from the platform
        if not text:
            if not item_id:
                raise InvalidInput("event has neither item_id nor item_text")
            catalogue_text = self.catalogue_text(item_id)
            if catalogue_text is None:
                raise InvalidInput(
                    f"item_id {item_id!r} is not in the {ctx.platform} catalogue and no item_text was sent"
                )
            text = catalogue_text
        # Every field was checked above; skip pydantic's second validation on this hot path.
        return UnifiedEvent.model_construct(
            platform=ctx.platform,
            user_key=ctx.pseudonymise(user_id) if user_id else "",
            item_id=item_id,
            text=text,
            event_type=event_type,
            order=event.timestamp_ms or event.position or index,
        )
