"""A platform's catalogue as the serving side sees it: item ids and titles in local-index order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Catalogue:
    """One platform's items: item_ids[i] and titles[i] describe local item i."""

    platform: str
    item_ids: tuple[str, ...]
    titles: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}
