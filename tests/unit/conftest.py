"""Unit tests see only the settings they write: the integration session's INTEREST_* overrides
(a temporary model repository, a catalogue slice) are set for the whole pytest session and
would otherwise reach the unit tests that run after them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_interest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("INTEREST_")]:
        monkeypatch.delenv(name)
