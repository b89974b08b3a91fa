"""Behaviour-text cleaning: HTML entities, whitespace, and PII scrubbing before tokenization."""

from __future__ import annotations

import html
import re

_WS = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]{1,200}>")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes: card-like numbers.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# Phone numbers: optional +country, an area code (bracketed or not), then 6-8 more digits.
_PHONE = re.compile(
    r"(?<!\w)(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?!\w)"
)


def clean_text(text: str) -> str:
    """Unescape HTML entities (twice: the data has `&amp;amp;`), drop tags, squash whitespace."""
    text = html.unescape(html.unescape(text))
    text = _TAG.sub(" ", text)
    return _WS.sub(" ", text).strip()


def scrub_pii(text: str) -> str:
    """Replace e-mail addresses, card-like numbers and phone numbers with placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub("[number]", text)
    return _PHONE.sub("[phone]", text)
