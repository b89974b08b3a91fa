"""Scale-out: one gateway on SQLite beside two gateways sharing PostgreSQL, both on one Triton.

Each stack is driven over gRPC the way a platform service calls the fleet
(devtools.fleet.client_channel: round_robin over the gateways, health-checked, retried on
UNAVAILABLE; the one-gateway stack gets the same client over one address). Each stack runs:
IngestEvents of real users' histories closed loop at the concurrency (ingest_rps,
ingest_p99_ms); Recommend of kitchen items from food for users with stored profiles who gave
consent, closed loop at the concurrency (recommend_rps, recommend_p99_ms), then open loop at
200/s (recommend_p99_ms_at_200rps). Every run records the CPU cores each process used: each
gateway, Triton (its process group), PostgreSQL (the postmaster and its backends) and the load
generator. Throughput per gateway core is throughput over the gateways' cores summed. Then, on
the two gateways, how soon a catalogue change made through one is served by the other
(`catalogue_propagation`: the issue's "rankable within one second on every gateway").

All of it shares this machine's cores, so the two-gateway figures are what two gateways do
beside Triton, PostgreSQL and the load generator here, not on machines of their own.
`make bench` runs this as its "scale_out" section; alone it writes var/bench/scale_out.json.

    python -m bench.scale_out [--duration 15] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg

from bench.loadgen import closed_loop, open_loop
from bench.outputs import standalone_section, write_json
from bench.procstat import CpuMeter, ProcessTree, Watched
from bench.report import CATALOGUE_TARGET_S, RECOMMEND_TARGET_RATE
from bench.run import (
    RECOMMEND_USERS,
    cache_counts,
    ingest_call,
    load_workload,
    log,
    measured,
    metric_samples,
    recommend_call,
    store_consented_profiles,
)
from devtools.fleet import SERVICE, GatewayProcess, client_channel, gateway_process
from devtools.postgres_launcher import PostgresServer, pg_binary, running_postgres
from devtools.triton_launcher import TritonServer
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.catalogue import Catalogue
from interest_core.config import ROOT, load_settings
from interest_model.corpus import UserSequence

CONCURRENCY = 8  # closed-loop calls in flight: saturates one gateway on this machine
CATALOGUE_CHANGES = 20  # new items added through one gateway and removed through the other
POLL_EVERY_S = 0.01  # how often the other gateway is asked while waiting
GIVE_UP_S = 10.0
OPEN_RATE = RECOMMEND_TARGET_RATE  # open-loop Recommend/s, the Recommend target's rate
DATABASE = "scale_out"

Workload = tuple[list[UserSequence], Catalogue, Catalogue]


def postmaster_pid(server: PostgresServer) -> int:
    """The postmaster's pid: the first line of the data directory's postmaster.pid."""
    return int((server.datadir / "postmaster.pid").read_text().split()[0])


def fresh_database(server: PostgresServer) -> str:
    """Create DATABASE on `server`; its URL."""
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE}")
    return server.url(DATABASE)


def rpcs_handled(metrics_port: int) -> float:
    """InterestGateway RPCs a gateway has answered so far (how round_robin spread the calls)."""
    return sum(value for labels, value in metric_samples(metrics_port, "grpc_server_handled_total")
               if labels.get("grpc_service") == SERVICE)


def stack_figures(gateways: list[str], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One stack's figures from its run summaries ("ingest", "recommend", "recommend_at_rate";
    bench.loadgen.RunResult.summary() with CPU): throughputs, p99s, each process's CPU cores in
    each run, and throughput per core of the `gateways` (watched names) summed."""
    cores = {kind: {name: p["cpu_cores"] for name, p in run["processes"].items()}
             for kind, run in runs.items()}
    gateway_cores = {kind: round(sum(cores[kind].get(g, 0.0) for g in gateways), 3) for kind in runs}

    def per_gateway_core(kind: str) -> float | None:
        used = gateway_cores[kind]
        return round(runs[kind]["throughput_rps"] / used, 1) if used else None

    ingest, recommend, at_rate = runs["ingest"], runs["recommend"], runs["recommend_at_rate"]
    return {
        "gateways": gateways,
        "ingest_rps": ingest["throughput_rps"],
        "ingest_p99_ms": ingest["p99_ms"],
        "recommend_rps": recommend["throughput_rps"],
        "recommend_p99_ms": recommend["p99_ms"],
        "recommend_p99_ms_at_200rps": at_rate["p99_ms"],
        "recommend_rps_at_200rps": at_rate["throughput_rps"],
        "errors": {kind: run["errors"] for kind, run in runs.items() if run["errors"]},
        "cpu": cores,
        "gateway_cores": gateway_cores,
        "ingest_rps_per_gateway_core": per_gateway_core("ingest"),
        "recommend_rps_per_gateway_core": per_gateway_core("recommend"),
        "runs": runs,
    }


@contextlib.asynccontextmanager
async def running_gateways(names: list[str], triton: TritonServer, profile_store: str | None
                           ) -> AsyncIterator[list[GatewayProcess]]:
    """Gateway processes on `triton` and `profile_store` (None: SQLite in each one's var dir),
    each with a fresh var/bench/scale-out/<name>; SERVING on entry, stopped (SIGTERM) on exit."""
    gateways = []
    for name in names:
        var = ROOT / "var" / "bench" / "scale-out" / name
        shutil.rmtree(var, ignore_errors=True)
        var.mkdir(parents=True)
        gateways.append(gateway_process(f"scale-out-{name}", ROOT / "var" / "bench" / "logs",
                                        triton.grpc_port, profile_store, var, log_level="WARNING"))
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            await gateway.wait_serving()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.terminate()


async def measure_stack(label: str, gateways: dict[str, GatewayProcess], others: list[Watched],
                        workload: Workload, concurrency: int, duration: float) -> dict[str, Any]:
    """Ingest, then Recommend closed loop, then Recommend open loop at OPEN_RATE, through one
    client channel over `gateways` (watched by their keys), with the CPU of each gateway, of
    `others` and of this load generator."""
    users, food, kitchen = workload
    meter = CpuMeter([*(Watched(name, g.pid) for name, g in gateways.items()), *others,
                      Watched("load_generator", os.getpid())])
    ports = [g.port for g in gateways.values()]
    cache_before = [cache_counts(g.metrics_port) for g in gateways.values()]
    async with client_channel(ports) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        stub = pb_grpc.InterestGatewayStub(channel)
        log(f"{label}: IngestEvents closed loop at {concurrency}")
        ingest = await measured(meter, closed_loop(ingest_call(stub, users, food, kitchen), concurrency,
                                                   duration))
        cache = [cache_counts(g.metrics_port) for g in gateways.values()]
        readers = users[:RECOMMEND_USERS]
        await store_consented_profiles(stub, readers, food, kitchen)
        log(f"{label}: Recommend (kitchen, from food) closed loop at {concurrency}, then open loop at "
            f"{OPEN_RATE:g}/s")
        recommend = await measured(meter, closed_loop(recommend_call(stub, readers, "kitchen"),
                                                      concurrency, duration))
        at_rate = await measured(meter, open_loop(recommend_call(stub, readers, "kitchen"), OPEN_RATE,
                                                  duration))
    hits = sum(after["hit"] - before["hit"] for before, after in zip(cache_before, cache))
    misses = sum(after["miss"] - before["miss"] for before, after in zip(cache_before, cache))
    figures = stack_figures(list(gateways), {"ingest": ingest.summary(), "recommend": recommend.summary(),
                                             "recommend_at_rate": at_rate.summary()})
    figures["ingest_cache_hit_rate"] = round(hits / max(hits + misses, 1), 4)
    figures["rpcs_handled"] = {name: rpcs_handled(g.metrics_port) for name, g in gateways.items()}
    log(f"{label}: ingest {figures['ingest_rps']} req/s ({figures['ingest_rps_per_gateway_core']} per "
        f"gateway core), Recommend {figures['recommend_rps']} req/s "
        f"({figures['recommend_rps_per_gateway_core']} per gateway core); RPCs by gateway "
        f"{figures['rpcs_handled']}")
    return figures


async def catalogue_propagation(a: GatewayProcess, b: GatewayProcess, kitchen: Catalogue,
                                changes: int = CATALOGUE_CHANGES) -> dict[str, Any]:
    """How soon a catalogue change made through gateway `a` is served by gateway `b`, and back.

    For each of `changes` new kitchen items (a real title marked "(fleet j)"), a user whose only
    activity is that very text (stored through b: target-only, so the model term ranks the item
    first once it is listed); the item is added through a, and b is asked for the user's top 5
    every POLL_EVERY_S until it is there: the seconds from a's reply to that answer. Then it is
    removed through b, and a is asked until it is gone. Each change is made after a seeded
    random pause within one poll period, so the lags sample the poll cycle's phases. The
    gateway that took a change must serve it at its first call after the reply (counted as
    `stale_on_own_gateway` otherwise)."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.port}") for g in (a, b)]
    stub_a, stub_b = (pb_grpc.InterestGatewayStub(c) for c in channels)
    adds: list[float] = []
    removes: list[float] = []
    stale = 0

    async def ranks(stub: pb_grpc.InterestGatewayStub, user: str, item_id: str) -> bool:
        reply = await stub.Recommend(pb.RecommendRequest(user_id=user, target_platform="kitchen", k=5),
                                     timeout=30)
        return item_id in [i.item_id for i in reply.items]

    async def lag(stub: pb_grpc.InterestGatewayStub, user: str, item_id: str, present: bool,
                  since: float) -> float:
        while await ranks(stub, user, item_id) != present:
            if time.monotonic() - since > GIVE_UP_S:
                return float("inf")
            await asyncio.sleep(POLL_EVERY_S)
        return time.monotonic() - since

    poll_s = load_settings().catalogue_poll_s
    rng = random.Random(0)
    try:
        for j in range(changes):
            user, item_id = f"bench-propagation-{j}", f"bench-fleet-new-{j}"
            title = f"{kitchen.titles[j]} (fleet {j})"
            await stub_b.IngestEvents(pb.IngestEventsRequest(platform="kitchen", events=[
                pb.BehaviorEvent(user_id=user, item_text=title, event_type="view")]), timeout=60)
            # each change at a seeded random point of the gateways' poll cycles: back to back,
            # every removal would land at the same phase of the other gateway's poll
            await asyncio.sleep(rng.uniform(0, poll_s))
            await stub_a.UpdateCatalogue(pb.UpdateCatalogueRequest(
                platform="kitchen", upserts=[pb.CatalogueItem(item_id=item_id, title=title)]), timeout=60)
            replied = time.monotonic()
            stale += not await ranks(stub_a, user, item_id)
            adds.append(await lag(stub_b, user, item_id, True, replied))
            await asyncio.sleep(rng.uniform(0, poll_s))
            await stub_b.UpdateCatalogue(pb.UpdateCatalogueRequest(
                platform="kitchen", remove_item_ids=[item_id]), timeout=60)
            replied = time.monotonic()
            stale += await ranks(stub_b, user, item_id)
            removes.append(await lag(stub_a, user, item_id, False, replied))
    finally:
        for channel in channels:
            await channel.close(None)

    def spread(lags: list[float]) -> dict[str, float | None]:
        done = sorted(x for x in lags if x != float("inf"))
        return {"p50_s": round(statistics.median(done), 3) if done else None,
                "max_s": round(done[-1], 3) if done else None, "never_seen": len(lags) - len(done)}

    out = {"changes": changes, "added_on_the_other": spread(adds), "removed_on_the_other": spread(removes),
           "stale_on_own_gateway": stale, "poll_s": poll_s,
           "target_s": CATALOGUE_TARGET_S}
    out["met"] = bool(stale == 0 and adds and max(adds + removes) < CATALOGUE_TARGET_S)
    log(f"catalogue changes reach the other gateway: added {out['added_on_the_other']}, removed "
        f"{out['removed_on_the_other']}, stale on their own gateway {stale}")
    return out


async def scale_out_run(triton: TritonServer, duration: float, concurrency: int = CONCURRENCY
                        ) -> dict[str, Any]:
    """Both stacks on `triton`, one after the other: the "scale_out" section of the bench."""
    pg_binary("initdb")  # PostgreSQL missing: fail before the first stack's runs, not after them
    users, food, kitchen = load_workload(load_settings())
    workload = ([u for u in users if u.items_a and u.items_b], food, kitchen)
    triton_watch = Watched("triton", triton.process.pid, group=True)
    out: dict[str, Any] = {"duration_s": duration, "concurrency": concurrency, "open_rate_rps": OPEN_RATE}

    log("scale-out: one gateway, profiles in SQLite")
    async with running_gateways(["sqlite"], triton, None) as (gateway,):
        out["one_gateway_sqlite"] = await measure_stack("one gateway (SQLite)", {"gateway": gateway},
                                                        [triton_watch], workload, concurrency, duration)

    log("scale-out: two gateways, profiles in one PostgreSQL")
    with running_postgres() as server:
        url = fresh_database(server)
        postgres = ProcessTree("postgres", postmaster_pid(server))
        async with running_gateways(["postgres-a", "postgres-b"], triton, url) as (a, b):
            out["two_gateways_postgres"] = await measure_stack(
                "two gateways (PostgreSQL)", {"gateway_a": a, "gateway_b": b}, [triton_watch, postgres],
                workload, concurrency, duration)
            log("scale-out: catalogue changes through one gateway, served by the other")
            try:
                out["catalogue_propagation"] = await catalogue_propagation(a, b, kitchen)
            except (grpc.aio.AioRpcError, OSError) as exc:  # the figures above are kept
                log(f"catalogue propagation not measured: {exc!r}")
                out["catalogue_propagation"] = {"error": repr(exc)}
    out["notes"] = (
        f"Measured on one machine ({os.cpu_count()} CPU cores) that every process shares: the "
        "gateways, one Triton, PostgreSQL and the load generator, so two gateways here add no "
        "cores, and the two-gateway figures are not what two gateways on machines of their own "
        "would do. `cpu` gives each process's cores in each run; *_per_gateway_core divides "
        "throughput by the gateways' cores summed, the figure to size a fleet by. "
        "rpcs_handled shows how round_robin spread the calls over the gateways.")
    return out


async def standalone(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    if not (settings.model_repository / settings.model_name / "VERSION.json").exists():
        raise SystemExit("no model installed: run `make engine` first")
    return await standalone_section(
        "scale_out", lambda triton: scale_out_run(triton, args.duration, args.concurrency))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help="closed-loop calls in flight for IngestEvents and Recommend")
    args = parser.parse_args(argv)
    data = asyncio.run(standalone(args))
    log(f"wrote {write_json('scale_out.json', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
