"""Online shops (the Amazon grocery and home-goods platforms): review/purchase/view events
on products identified by ASIN-like ids."""

from __future__ import annotations

import re

from gateway.adapters.base import PlatformAdapter
from interest_core.errors import InvalidInput

_PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class ShopReviewAdapter(PlatformAdapter):
    name = "amazon_review"

    def check_item_id(self, item_id: str) -> None:
        if not _PRODUCT_ID.match(item_id):
            raise InvalidInput(
                f"item_id {item_id[:40]!r} is not a product id (letters, digits, '-' or '_', up to 32)"
            )
