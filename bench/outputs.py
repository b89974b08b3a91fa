"""Where the benchmark's standalone runs keep what they measured: var/bench/ (git-ignored);
`make bench` writes results/ instead (bench.report). And how a section runs alone, on a Triton
of its own."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from devtools.provenance import machine, revision
from devtools.triton_launcher import TritonServer, free_port, start_triton
from interest_core.config import ROOT, load_settings

BENCH_VAR = ROOT / "var" / "bench"


def write_json(name: str, data: Any) -> Path:
    """`data` as var/bench/`name` (indented JSON); the path written."""
    path = BENCH_VAR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


async def standalone_section(key: str, run: Callable[[TritonServer], Awaitable[Any]]) -> dict[str, Any]:
    """`run(triton)` on a Triton of its own (free ports, its log in
    var/bench/logs/tritonserver-<key>.log), stopped whatever happens; the result under `key`
    with the revision and the machine, as `python -m bench.<key>` writes it."""
    logs = BENCH_VAR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton = start_triton(load_settings(), http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(),
                          log_path=logs / f"tritonserver-{key.replace('_', '-')}.log")
    try:
        result = await run(triton)
    finally:
        triton.stop()
    return {"revision": revision(), "machine": machine(), key: result}
