"""Where the benchmark's standalone runs keep what they measured: var/bench/ (git-ignored);
`make bench` writes results/ instead (bench.report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interest_core.config import ROOT

BENCH_VAR = ROOT / "var" / "bench"


def write_json(name: str, data: Any) -> Path:
    """`data` as var/bench/`name` (indented JSON); the path written."""
    path = BENCH_VAR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path
