"""Recommend while a gateway builds its index of the items added since `make engine`.

A real gateway (`python -m gateway.server`) on the real Triton serves the million-item kitchen
catalogue of `bench.catalogue_scale` (reused from var/bench/catalogues, built there if absent)
with `ann_added_index_min` at INDEX_MIN. Platforms add ADDED new items through UpdateCatalogue,
1,000 a call (real kitchen titles marked "(added j)": no cache has them, so Triton embeds each):
first ADDED - INDEX_MIN of them, quietly, the gateway indexing them as they come
(gateway/catalogue.py); once its last build is over, the last INDEX_MIN, whose last call starts a
build of all ADDED in the background. From that reply on, the model-only users of
`bench.catalogue_scale` (every call through the indexes) ask Recommend at RATE/s, open loop, for
DURATION s. The builds' starts and ends are read from the gateway's own log. Reported: the p50
and p99 (and errors by status) of the calls sent while the build ran and of those sent after
it, p99 second by second, the build's time as the gateway logged it, and the adds' texts/s
through Triton. Written to var/bench/added_index_load.json.

    python -m bench.added_index_load [--added 50000] [--index-min 10000] [--rate 200] [--duration 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.catalogue_scale import PLATFORM, install, ms, populations
from bench.loadgen import open_loop
from bench.outputs import BENCH_VAR, standalone_section, write_json
from bench.run import load_workload, log
from devtools.fleet import client_channel, gateway_process
from devtools.triton_launcher import TritonServer
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import load_settings

SIZE = 1_000_000
BATCH = 1_000  # the default max_catalogue_changes_per_request
BUILT = re.compile(r"indexed the (\d+) items added or changed since its index was built in ([\d.]+) s")
STARTED = re.compile(r"indexing the (\d+) items added or changed since its index was built")


def builds(path: Any, since: int) -> tuple[int, list[tuple[int, float]]]:
    """(builds started, [(items, seconds) of each finished]) in the gateway's log after byte `since`."""
    text = path.read_bytes()[since:].decode(errors="replace")
    return len(STARTED.findall(text)), [(int(n), float(s)) for n, s in BUILT.findall(text)]


async def quiet(path: Any, since: int, settle_s: float = 3.0, timeout_s: float = 600.0
                ) -> list[tuple[int, float]]:
    """Wait until every build started since byte `since` of the log has finished, and none has
    started for `settle_s` (a build starts a moment after the call that brought it); those builds."""
    deadline = time.monotonic() + timeout_s
    calm_since, seen = time.monotonic(), (-1, -1)
    while True:
        started, done = builds(path, since)
        if (started, len(done)) != seen:
            calm_since, seen = time.monotonic(), (started, len(done))
        if started == len(done) and time.monotonic() - calm_since >= settle_s:
            return done
        if time.monotonic() > deadline:
            raise SystemExit(f"a build of the added items did not finish within {timeout_s:g} s ({path})")
        await asyncio.sleep(0.1)


async def watch_log(path: Any, since: int, items: int, started: float, found: dict[str, float]) -> None:
    """Record when the gateway's log says a build of `items` items that started after byte
    `since` finished (seconds after `started`)."""
    while True:
        await asyncio.sleep(0.05)
        if done := [d for d in builds(path, since)[1] if d[0] == items]:
            found.update(at_s=time.monotonic() - started, items=float(items), build_s=done[0][1])
            return


def window(calls: list[tuple[float, float, str]], first: float, last: float) -> dict[str, Any]:
    """p50 / p99 (ms) of the calls sent in [first, last) that succeeded, and the others by status."""
    lat = [latency for sent, latency, status in calls if first <= sent < last and status == "OK"]
    errors: dict[str, int] = {}
    for sent, _, status in calls:
        if first <= sent < last and status != "OK":
            errors[status] = errors.get(status, 0) + 1
    if not lat:
        return {"calls": 0, "errors": errors}
    return {"calls": len(lat), "errors": errors, "p50_ms": ms(lat, 50), "p99_ms": ms(lat, 99)}


async def add(stub: pb_grpc.InterestGatewayStub, titles: Sequence[str], first: int, last: int) -> float:
    """Add items `first`..`last` - 1 through UpdateCatalogue, BATCH a call; their texts/s."""
    started = time.monotonic()
    for start in range(first, last, BATCH):
        upserts = [pb.CatalogueItem(item_id=f"added-{j}", title=f"{titles[j % len(titles)]} (added {j})")
                   for j in range(start, min(start + BATCH, last))]
        reply = await stub.UpdateCatalogue(pb.UpdateCatalogueRequest(platform=PLATFORM, upserts=upserts),
                                           timeout=300)
        if reply.rejected:
            raise SystemExit(f"UpdateCatalogue refused {reply.rejected} items: {reply}")
        if (start // BATCH) % 10 == 9:
            log(f"  {start + BATCH:,} added")
    return (last - first) / (time.monotonic() - started)


async def run(triton: TritonServer, added: int, index_min: int, rate: float,
              duration: float) -> dict[str, Any]:
    if not 0 < index_min <= added:
        raise SystemExit(f"--index-min must be in 1..--added ({added})")
    settings = load_settings()
    _, food, kitchen = load_workload(settings)
    repo, _ = install(settings, SIZE)
    var = BENCH_VAR / "added-index-load"
    shutil.rmtree(var, ignore_errors=True)
    gateway = gateway_process("added-index-load", BENCH_VAR / "logs", triton.grpc_port, None, var,
                              log_level="INFO", model_repository=repo, ann_added_index_min=index_min)
    gateway.start()
    since = gateway.log_path.stat().st_size if gateway.log_path.exists() else 0
    try:
        await gateway.wait_serving(timeout_s=600)
        async with client_channel([gateway.port]) as channel:
            stub = pb_grpc.InterestGatewayStub(channel)
            users = populations(1000)[1]  # model_only: every call through the indexes
            log(f"storing the profiles of {len(users.users)} model-only users")
            await users.store(stub, food, kitchen)
            log(f"adding {added - index_min:,} items through UpdateCatalogue, {BATCH:,} a call, no Recommend")
            rate_before = await add(stub, kitchen.titles, 0, added - index_min)
            before = await quiet(gateway.log_path, since)
            log(f"  {rate_before:.0f} texts/s; built meanwhile: {before} (items, s)")
            mark = gateway.log_path.stat().st_size
            log(f"adding the last {index_min:,}: the last call starts a build of all {added:,}")
            rate_last = await add(stub, kitchen.titles, added - index_min, added)
            log(f"  {rate_last:.0f} texts/s; Recommend of {len(users.users)} model-only users at {rate:g}/s "
                f"for {duration:g} s")
            build: dict[str, float] = {}
            watcher = asyncio.create_task(watch_log(gateway.log_path, mark, added, time.monotonic(), build))
            calls = (await open_loop(users.call(stub), rate, duration)).timeline
            watcher.cancel()
    finally:
        gateway.terminate()
    if build:
        log(f"  built {build['items']:.0f} items in {build['build_s']} s (the gateway's log; seen "
            f"{build['at_s']:.1f} s after the last add)")
    else:
        log(f"  the build of {added:,} items had not ended {duration:g} s after the last add")
    ended = build.get("at_s", duration)
    during, after = window(calls, 0.0, ended), window(calls, ended + 1.0, duration)
    log(f"  Recommend while it built: {during}; after it: {after}")
    return {"catalogue_items": SIZE, "added": added, "index_min": index_min,
            "texts_per_s": round(rate_before, 1), "builds_before": before, "rate_rps": rate,
            "duration_s": duration, "build": build, "during_build": during, "after_build": after,
            "p99_ms_by_second": [window(calls, s, s + 1.0).get("p99_ms") for s in range(int(duration))]}


async def standalone(args: argparse.Namespace) -> dict[str, Any]:
    return await standalone_section("added_index_load", lambda triton: run(
        triton, args.added, args.index_min, args.rate, args.duration))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.added_index_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--added", type=int, default=50_000, help="items added in all")
    parser.add_argument("--index-min", type=int, default=load_settings().ann_added_index_min,
                        help="the gateway's ann_added_index_min: the last this many added start the "
                        "measured build")
    parser.add_argument("--rate", type=float, default=200.0, help="Recommend calls a second")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of Recommend from the last add")
    args = parser.parse_args(argv)
    result = asyncio.run(standalone(args))
    write_json("added_index_load.json", result)
    print(json.dumps(result["added_index_load"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
