"""A video site: watch events (the config entry's event_types) on videos; a video id may
start with '-' or '_' (YouTube-style ids)."""

from __future__ import annotations

import re

from gateway.adapters.base import PlatformAdapter


class VideoWatchAdapter(PlatformAdapter):
    name = "video_watch"
    id_kind = "video"
    id_pattern = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
    id_rule = "letters, digits, '-' or '_', up to 64"
