"""A social app: like/comment/share events (the config entry's event_types) on posts."""

from __future__ import annotations

import re

from gateway.adapters.base import PlatformAdapter


class SocialPostAdapter(PlatformAdapter):
    name = "social_post"
    id_kind = "post"
    id_pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$")
    id_rule = "letters, digits, '-', '_' or ':', up to 64"
