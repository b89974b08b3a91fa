"""`make eval` (served part): the same test users through the real, running stack.

    python -m devtools.served_eval --offline var/eval/offline.json --out results/

Starts Triton on the configured model repository (`make eval` points it at
var/eval/<dataset>/model_repository, where it installed the engine of the evaluated
checkpoint, leaving the served model_repository/ alone) and the gateway, then for every
test user of each warm task: SetConsent, IngestEvents with their source-platform items,
Recommend from the target catalogue (k=200), and scores the returned list. Offline
`model_int8` on the same users is the reference; the results go to results/eval.{json,md,png}
with the revision and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from devtools.provenance import machine, revision
from devtools.readiness import wait_serving
from devtools.triton_launcher import free_port, start_triton
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import ROOT, Settings, load_settings
from interest_model.datasets import InteractionData, load_dataset
from interest_model.evaluation.offline import measure
from interest_model.evaluation.report import write_all
from interest_model.tasks import Direction, pairs_of, user_rows

log = logging.getLogger("interest.served_eval")
K = 200  # the gateway's max_k: MRR counts a first hit within the top 200 (0 beyond)


def ranking_scores(ranked: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Returned rankings as scores float32 [U, n_items]: descending over each returned list,
    -inf (never ranked) for every item the gateway did not return."""
    scores = np.full((len(ranked), n_items), -np.inf, dtype=np.float32)
    for row, items in enumerate(ranked):
        scores[row, list(items)] = np.arange(len(items), 0, -1, dtype=np.float32)
    return scores


def event_types(settings: Settings, data: InteractionData) -> dict[str, str]:
    """Per platform of `data`, the event type its users' history is ingested as (the first of
    its config entry's event_types). Raises ValueError for a platform the gateway would not serve."""
    missing = [p for p in data.platforms if p not in settings.platforms]
    if missing:
        raise ValueError(f"dataset {data.name!r} has platforms {', '.join(missing)} without a "
                         "`platforms:` entry in the config, so the gateway cannot serve them "
                         "(see config/social-video.yaml)")
    return {p: settings.platforms[p].event_types[0] for p in data.platforms}


async def serve_users(stub: pb_grpc.InterestGatewayStub, data: InteractionData, source: str,
                      target: str, users: list[list[int]], event_type: str,
                      concurrency: int = 8) -> list[list[int]]:
    """Ingest each user's source history as `event_type` events and return the target items
    recommended to them (catalogue positions, best first)."""
    src_ids, tgt_pos = data.catalogues[source].item_ids, data.catalogues[target].index()
    results: list[list[int]] = [[] for _ in users]
    queue = iter(range(len(users)))
    run = f"{int(time.time())}"

    async def worker() -> None:
        for n in queue:
            hist = users[n]
            uid = f"eval-{run}-{source}-{target}-{n}"
            await stub.SetConsent(pb.SetConsentRequest(user_id=uid, migrate=True), timeout=30)
            reply = await stub.IngestEvents(pb.IngestEventsRequest(platform=source, events=[
                pb.BehaviorEvent(user_id=uid, item_id=src_ids[i], event_type=event_type, position=p + 1)
                for p, i in enumerate(hist)]), timeout=60)
            if reply.rejected:
                raise RuntimeError(f"user {n}: {reply.rejected} events rejected: {reply.results}")
            rec = await stub.Recommend(pb.RecommendRequest(user_id=uid, target_platform=target, k=K),
                                       timeout=60)
            results[n] = [tgt_pos[r.item_id] for r in rec.items]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def serve_tasks(stub: pb_grpc.InterestGatewayStub, data: InteractionData, tasks: dict[str, Any],
                      ingest_as: dict[str, str], users: int = 100_000) -> None:
    """Serve the test users (at most `users`) of each warm task of an offline result's `tasks`
    through the gateway behind `stub`, and add each task's `served` metrics beside the offline
    reference (`model_int8`, else `model_fp32`) on the same users."""
    test = user_rows(data.split("test"), data.platforms, {})
    for task, body in tasks.items():
        if task.endswith("/new-items"):
            body["served_note"] = ("served: not run for the new-items task; the gateway serves "
                                   "the checkpoint trained on every item, not the hold-out model.")
            continue
        if "/overlap-" in task:
            body["served_note"] = ("offline only: model_fp32 is the served ranking of a checkpoint "
                                   "trained with fewer overlap users; the gateway serves the one "
                                   "trained with all of them.")
            continue
        if "/" in task:
            body["served_note"] = ("offline only: these users are a subset of the whole task's, "
                                   "whose served run is above.")
            continue
        source, target = task.split("->")
        hist, rel = (part[:users] for part in pairs_of(test, Direction(source, target)))
        started = time.monotonic()
        ranked = await serve_users(stub, data, source, target, hist, ingest_as[source])
        scores = ranking_scores(ranked, len(data.catalogues[target]))
        body["methods"]["served"] = measure(scores.__getitem__, hist, rel)[0]
        reference = body["methods"].get("model_int8") or body["methods"]["model_fp32"]
        body["served_offline_reference"] = reference
        rate = len(hist) / (time.monotonic() - started)
        body["served_note"] = (
            f"served: {len(hist)} test users through the running gateway ({rate:.0f} users/s); "
            f"MRR counts a first hit within the returned top {K} only. Offline reference: "
            f"{'model_int8' if 'model_int8' in body['methods'] else 'model_fp32'} on the same users.")
        log.info("%s served: NDCG@10 %.4f (offline %.4f) over %d users", task,
                 body["methods"]["served"]["ndcg@10"], reference["ndcg@10"], len(hist))


async def run(args: argparse.Namespace, settings: Settings, data: InteractionData,
              offline: dict[str, Any], ingest_as: dict[str, str]) -> dict[str, Any]:
    """Start Triton and the gateway (with the same config), serve every warm task (each
    platform's history ingested as its `ingest_as` event type), stop both."""
    state = settings.var_dir / "eval"
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton = start_triton(settings, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          log_path=logs / "tritonserver.log")
    try:  # Triton is stopped whatever fails after it started
        port, metrics_port = free_port(), free_port()
        env = {**os.environ, "INTEREST_GRPC_PORT": str(port), "INTEREST_METRICS_PORT": str(metrics_port),
               "INTEREST_TRITON_GRPC_PORT": str(triton.grpc_port), "INTEREST_VAR_DIR": str(state),
               "INTEREST_LOG_LEVEL": "WARNING"}
        config = ["--config", str(args.config.resolve())] if args.config is not None else []
        with (logs / "gateway.log").open("wb") as gateway_log:
            proc = subprocess.Popen([sys.executable, "-m", "gateway.server", *config], env=env, cwd=ROOT,
                                    stdout=gateway_log, stderr=subprocess.STDOUT)
        try:
            log.info("gateway starting on the catalogues installed with the model")
            await wait_serving(port, proc, f"the gateway (log {logs / 'gateway.log'})", timeout_s=120)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await serve_tasks(pb_grpc.InterestGatewayStub(channel), data, offline["tasks"], ingest_as,
                                  args.users)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        triton.stop()
    offline.update({"revision": revision(), "machine": machine(),
                    "primary_task": next(iter(offline["tasks"]))})
    return offline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.served_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", type=Path, default=Path("var/eval/offline.json"),
                        help="output of `python -m interest_model.evaluation.offline`")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--users", type=int, default=100_000, help="at most this many test users per task")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where eval.{json,md,png} go")
    args = parser.parse_args(argv)
    if not args.offline.exists():
        parser.error(f"{args.offline} is missing: run `python -m interest_model.evaluation.offline` first")
    if args.users < 1:
        parser.error("--users must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    offline = json.loads(args.offline.read_text())
    settings = load_settings(args.config)
    data = load_dataset(settings, offline["dataset"])
    try:
        ingest_as = event_types(settings, data)
    except ValueError as exc:
        parser.error(str(exc))
    results = asyncio.run(run(args, settings, data, offline, ingest_as))
    write_all(results, args.out)
    log.info("wrote %s/eval.json, eval.md, eval.png", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
