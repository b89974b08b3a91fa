"""Platform adapters: a platform's event, in its own terms -> one UnifiedEvent.

A new platform format is a new adapter class registered here plus a config entry.
"""

from __future__ import annotations

from gateway.adapters.amazon_review import AmazonReviewAdapter
from gateway.adapters.base import AdapterContext, PlatformAdapter
from gateway.adapters.social_post import SocialPostAdapter
from gateway.adapters.video_watch import VideoWatchAdapter

ADAPTERS: dict[str, type[PlatformAdapter]] = {
    cls.name: cls for cls in (AmazonReviewAdapter, SocialPostAdapter, VideoWatchAdapter)
}


def adapter_for(name: str) -> type[PlatformAdapter]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"no adapter named {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


__all__ = ["ADAPTERS", "AdapterContext", "PlatformAdapter", "adapter_for"]
