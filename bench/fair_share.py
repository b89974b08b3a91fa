"""Fair share between platforms: kitchen asks Recommend at a steady rate, first alone, then
while food floods the gateway closed loop far past its per-platform limit (food's share,
platforms.food.max_in_flight), by default with EncodeInterest of texts no cache has seen.
The victim's p99 alone and flooded, its errors, and the flooder's refusals go into
results/bench.json "fair_share" (`make bench`), or, run alone, into var/bench/fair_share.json.

The flooder runs in a process of its own, so that its refusal storm does not slow the
victim's load generator (only the gateway, as it would in production).

    python -m bench.fair_share [--duration 15] [--victim-rate 50] [--flood-concurrency 32]
                               [--food-limit 4] [--food-rate R] [--flood-rpc encode|recommend]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import closed_loop, open_loop
from bench.outputs import standalone_section, write_json
from bench.procstat import CpuMeter, Watched
from devtools.readiness import wait_serving
from devtools.triton_launcher import TritonServer, free_port
from gateway.auth import API_KEY_HEADER, key_digest
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.catalogue import Catalogue
from interest_core.config import ROOT, load_settings
from interest_model.corpus import UserSequence, load_catalogue, load_sequences

KEYS = {"food": "bench-food-key", "kitchen": "bench-kitchen-key", "*": "bench-operator-key"}
USERS = 200  # users with a stored profile on each side, asked for in turn
EVENTS = 8
TARGET_RATIO = 2.0  # the victim's p99 flooded within 2x of alone


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _metadata(platform: str) -> tuple[tuple[str, str], ...]:
    return ((API_KEY_HEADER, KEYS[platform]),)


def recommend(stub: pb_grpc.InterestGatewayStub, platform: str, users: list[UserSequence]) -> Any:
    """Recommend `platform` items with `platform`'s key for users[i] (their own stored profile)."""
    async def call(i: int) -> object:
        return await stub.Recommend(pb.RecommendRequest(
            user_id=f"fair-{users[i % len(users)].uid}", target_platform=platform, k=10),
            timeout=10, metadata=_metadata(platform))
    return call


async def store_profiles(stub: pb_grpc.InterestGatewayStub, users: list[UserSequence], food: Catalogue,
                         kitchen: Catalogue) -> None:
    """Each user's last food and kitchen items, ingested with the operator key (food's own key
    would meet food's rate limit while setting up, not in the measured runs)."""
    for u in users:
        for platform, cat, items in (("food", food, u.items_a), ("kitchen", kitchen, u.items_b)):
            await stub.IngestEvents(pb.IngestEventsRequest(platform=platform, events=[
                pb.BehaviorEvent(user_id=f"fair-{u.uid}", item_id=cat.item_ids[j], event_type="review",
                                 position=n) for n, j in enumerate(items[-EVENTS:])]),
                timeout=30, metadata=_metadata("*"))


def refused(metrics_port: int) -> dict[str, float]:
    """interest_requests_refused_total by 'platform limit', from the gateway's /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {f"{s.labels['platform']} {s.labels['limit']}": s.value
            for family in text_string_to_metric_families(body) for s in family.samples
            if s.name == "interest_requests_refused_total"}


def encode_unseen(stub: pb_grpc.InterestGatewayStub, titles: list[str]) -> Any:
    """EncodeInterest of EVENTS real food titles made unique (no cache hit: each goes through the
    model), with food's key: the costly call a flooding platform sends."""
    async def call(i: int) -> object:
        return await stub.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[
            pb.BehaviorEvent(item_text=f"{titles[(i * EVENTS + j) % len(titles)]} #{i}", event_type="view")
            for j in range(EVENTS)]), timeout=10, metadata=_metadata("food"))
    return call


async def flood(target: str, rpc: str, concurrency: int, duration: float) -> dict[str, Any]:
    """The flooder process's loop: food's `rpc` closed loop (no backoff), with food's key."""
    settings = load_settings()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        if rpc == "encode":
            titles = load_catalogue(settings.model_copy(update={"catalogue_limit": None}), "food").titles
            call = encode_unseen(stub, list(titles))
        else:
            users = load_sequences(settings.data_dir / settings.platforms["food"].dataset, "test.txt")
            call = recommend(stub, "food", [u for u in users if u.items_a and u.items_b][:USERS])
        result = await closed_loop(call, concurrency, duration)
    return result.summary()


def gateway_env(triton: TritonServer, grpc_port: int, metrics_port: int, var: Path,
                food_limit: int, food_rate: float | None = None) -> dict[str, str]:
    rate = {"INTEREST_PLATFORMS__FOOD__MAX_RPS": str(food_rate)} if food_rate is not None else {}
    return {**os.environ, **rate, "INTEREST_GRPC_PORT": str(grpc_port),
            "INTEREST_METRICS_PORT": str(metrics_port),
            "INTEREST_TRITON_GRPC_PORT": str(triton.grpc_port), "INTEREST_VAR_DIR": str(var),
            "INTEREST_LOG_LEVEL": "WARNING",
            "INTEREST_API_KEYS": json.dumps({key_digest(k): p for p, k in KEYS.items()}),
            "INTEREST_PLATFORMS__FOOD__MAX_IN_FLIGHT": str(food_limit)}


async def fair_share_run(triton: TritonServer, logs: Path, var: Path, duration: float,
                         victim_rate: float, flood_concurrency: int, food_limit: int,
                         flood_rpc: str = "encode", food_rate: float | None = None) -> dict[str, Any]:
    """Start a gateway with per-platform keys and food's limit on `triton`, store profiles, and
    measure kitchen's Recommend at `victim_rate` alone, then beside food's flood."""
    settings = load_settings()
    users = [u for u in load_sequences(settings.data_dir / settings.platforms["food"].dataset, "test.txt")
             if u.items_a and u.items_b][:USERS]
    full = settings.model_copy(update={"catalogue_limit": None})
    food, kitchen = load_catalogue(full, "food"), load_catalogue(full, "kitchen")
    port, metrics_port = free_port(), free_port()
    gw_log = logs / "gateway-fair-share.log"
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.server"], cwd=ROOT,
                               env=gateway_env(triton, port, metrics_port, var, food_limit, food_rate),
                               stdout=gw_log.open("wb"), stderr=subprocess.STDOUT)
    try:
        await wait_serving(port, gateway, f"the fair-share gateway (log {gw_log})")
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InterestGatewayStub(channel)
            log(f"fair share: storing food and kitchen profiles of {len(users)} users")
            await store_profiles(stub, users, food, kitchen)
            victim = recommend(stub, "kitchen", users)
            await open_loop(victim, victim_rate, 2.0)  # warm-up, not counted
            meter = CpuMeter([Watched("gateway", gateway.pid), Watched("load_generator", os.getpid()),
                              Watched("triton", triton.process.pid, group=True)])
            log(f"  kitchen Recommend at {victim_rate:g}/s alone")
            meter.start()
            alone = await open_loop(victim, victim_rate, duration)
            alone.cpu = meter.stop(alone.cpu_wall_s)
            log(f"  kitchen Recommend at {victim_rate:g}/s while food floods {flood_rpc} closed loop at "
                f"{flood_concurrency} (its limit {food_limit})")
            before = refused(metrics_port)
            flooder = subprocess.Popen(
                [sys.executable, "-m", "bench.fair_share", "--flood", target, "--flood-rpc", flood_rpc,
                 "--flood-concurrency", str(flood_concurrency), "--duration", str(duration + 6.0)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=(logs / "flooder.log").open("wb"))
            await asyncio.sleep(4.0)  # the flooder's start-up and its 1 s warm-up
            meter = CpuMeter([Watched("gateway", gateway.pid), Watched("load_generator", os.getpid()),
                              Watched("triton", triton.process.pid, group=True),
                              Watched("flooder", flooder.pid)])
            meter.start()
            flooded = await open_loop(victim, victim_rate, duration)
            flooded.cpu = meter.stop(flooded.cpu_wall_s)
            out, _ = await asyncio.to_thread(flooder.communicate, timeout=120)
            flood_summary = json.loads(out.decode().strip().splitlines()[-1])
            after = refused(metrics_port)
    finally:
        if gateway.poll() is None:
            gateway.terminate()
            gateway.wait(timeout=20)
    a: dict[str, Any] = alone.summary()
    f: dict[str, Any] = flooded.summary()
    victim_errors = sum(flooded.errors.values()) + sum(alone.errors.values())
    by_gateway = after.get("food platform", 0.0) - before.get("food platform", 0.0)
    ratio = f["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("inf")
    result = {
        "victim_p99_alone_ms": a["p99_ms"], "victim_p99_flooded_ms": f["p99_ms"],
        "victim_p50_alone_ms": a["p50_ms"], "victim_p50_flooded_ms": f["p50_ms"],
        "victim_errors": victim_errors,
        "flooder_refused": flood_summary["errors"].get("RESOURCE_EXHAUSTED", 0),
        "flooder_refused_by_gateway_metric": by_gateway,
        "flooder_errors": flood_summary["errors"],
        "flooder_ok_rps": flood_summary["throughput_rps"],
        "victim_rate_rps": victim_rate, "victim_achieved_rps": f["throughput_rps"],
        "flood_rpc": {"encode": "EncodeInterest", "recommend": "Recommend"}[flood_rpc],
        "flood_concurrency": flood_concurrency, "food_max_in_flight": food_limit, "food_max_rps": food_rate,
        "kitchen_max_in_flight": settings.in_flight_limit("kitchen")[0],
        "max_in_flight": settings.max_in_flight, "duration_s": duration,
        "p99_ratio": round(ratio, 2),
        "met": ratio <= TARGET_RATIO and victim_errors == 0 and "INTERNAL" not in flood_summary["errors"],
        "runs": {"alone": a, "flooded": f, "flooder": flood_summary},
    }
    log(f"  victim p99 {a['p99_ms']} ms alone, {f['p99_ms']} ms flooded ({ratio:.2f}x), errors "
        f"{victim_errors}; flooder {flood_summary['throughput_rps']} OK/s, refused "
        f"{result['flooder_refused']} ({flood_summary['errors']})")
    return result


async def standalone(args: argparse.Namespace) -> dict[str, Any]:
    return await standalone_section("fair_share", lambda triton: fair_share_run(
        triton, ROOT / "var" / "bench" / "logs", ROOT / "var" / "bench" / "fair-share", args.duration,
        args.victim_rate, args.flood_concurrency, args.food_limit, args.flood_rpc, args.food_rate))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--victim-rate", type=float, default=50.0,
                        help="kitchen's open-loop Recommend rate, requests/s")
    parser.add_argument("--flood-concurrency", type=int, default=32,
                        help="food's closed-loop Recommend concurrency (no backoff)")
    parser.add_argument("--food-limit", type=int, default=4, help="platforms.food.max_in_flight")
    parser.add_argument("--food-rate", type=float, default=None,
                        help="platforms.food.max_rps (default: no rate limit)")
    parser.add_argument("--flood-rpc", choices=("encode", "recommend"), default="encode",
                        help="what food floods with: EncodeInterest of unseen texts (each through the "
                        "model) or Recommend")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fair_share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    add_arguments(parser)
    parser.add_argument("--flood", metavar="HOST:PORT", help=argparse.SUPPRESS)  # the flooder process
    args = parser.parse_args(argv)
    if args.flood:
        summary = asyncio.run(flood(args.flood, args.flood_rpc, args.flood_concurrency, args.duration))
        print(json.dumps(summary), flush=True)
        return 0
    data = asyncio.run(standalone(args))
    log(f"wrote {write_json('fair_share.json', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
