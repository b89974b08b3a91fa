"""Online shops (the Amazon grocery and home-goods platforms): review/purchase/view events
on products identified by ASIN-like ids."""

from __future__ import annotations

import re

from gateway.adapters.base import PlatformAdapter


class AmazonReviewAdapter(PlatformAdapter):
    name = "amazon_review"
    id_kind = "product"
    id_pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
    id_rule = "letters, digits, '-' or '_', up to 32"
