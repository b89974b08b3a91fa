"""Demo client: real held-out users' grocery history in, home-goods recommendations out.

For each user it ingests their platform-A ("food") events through IngestEvents, asks
Recommend for the target platform, and prints the titles, marking the items the user
really took there (which the model never saw).

    python -m gateway.demo [--users 3] [--target localhost:50051]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import load_settings
from interest_core.data import load_catalogue, load_sequences


async def run_demo(target: str, users: int, source: str, dest: str, k: int, config: Path | None) -> int:
    settings = load_settings(config)
    src_cfg = settings.platforms[source]
    folder = settings.data_dir / src_cfg.dataset
    src_cat = load_catalogue(settings.model_copy(update={"catalogue_limit": None}), source)
    dst_cat = load_catalogue(settings.model_copy(update={"catalogue_limit": None}), dest)
    people = [u for u in load_sequences(folder, "test.txt") if len(u.items_a) >= 3][:users]
    a_side = src_cfg.side == "A"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        for person in people:
            history = person.items_a if a_side else person.items_b
            truth = {dst_cat.item_ids[i] for i in (person.items_b if a_side else person.items_a)
                     if i < len(dst_cat)}
            user_id = f"demo-test-user-{person.uid}"
            await stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), timeout=10)
            await stub.SetConsent(pb.SetConsentRequest(user_id=user_id, migrate=True), timeout=10)
            events = [pb.BehaviorEvent(user_id=user_id, item_id=src_cat.item_ids[i],
                                       item_text=src_cat.titles[i], event_type="review",
                                       position=n + 1)
                      for n, i in enumerate(history)]
            ingest = await stub.IngestEvents(pb.IngestEventsRequest(platform=source, events=events),
                                             timeout=60)
            started = time.perf_counter()
            rec = await stub.Recommend(pb.RecommendRequest(user_id=user_id, target_platform=dest, k=k),
                                       timeout=10)
            rec_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await stub.EncodeInterest(pb.EncodeInterestRequest(
                platform=source, events=[pb.BehaviorEvent(item_text=f"{src_cat.titles[history[0]]} (gift)",
                                                          event_type="view")]), timeout=10)
            enc_ms = (time.perf_counter() - started) * 1000
            print(f"\n=== held-out user {person.uid}: {ingest.accepted} {source} events in, "
                  f"top {k} {dest} items out ===")
            print(f"  {source} history (most recent last):")
            for i in history[-6:]:
                print("    - " + textwrap.shorten(src_cat.titles[i], 90))
            print(f"  recommended on {dest} (never acted there as far as the stack knows; "
                  f"{rec.explanation}):")
            for item in rec.items:
                mark = "  <- really taken" if item.item_id in truth else ""
                print(f"    {item.rank:2d}. [{item.score:.3f}] "
                      f"{textwrap.shorten(item.title, 80)}{mark}")
            profile = await stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=10)
            print("  " + interests_line(profile, rec, source, dest))
            hits = sum(item.item_id in truth for item in rec.items)
            print(f"  {hits} of the top {k} are among the {len(truth)} {dest} items this user took")
            print(f"  latency seen by this client: Recommend {rec_ms:.1f} ms over {len(dst_cat)} items; "
                  f"EncodeInterest of one new text {enc_ms:.1f} ms")
    return 0


def interests_line(profile: pb.GetProfileResponse, rec: pb.RecommendResponse, source: str,
                   dest: str) -> str:
    """The user's named interest categories: their source profile's and the migrated query's."""
    def named(cats: Sequence[pb.InterestCategory]) -> str:
        return ", ".join(f"{c.name} ({c.weight:.0%})" for c in cats)

    mine: Sequence[pb.InterestCategory] = next(
        (p.interests for p in profile.platforms if p.platform == source), [])
    if not mine and not rec.interests:
        return "interests: (no trained interest categories installed: pretrained model)"
    return (f"interests on {source}: {named(mine) or '-'} | migrated to {dest}: "
            f"{named(rec.interests) or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="gateway address (default from config)")
    parser.add_argument("--users", type=int, default=3, help="held-out users to show")
    parser.add_argument("--source", default="food", help="platform whose history is sent")
    parser.add_argument("--dest", default="kitchen", help="platform to recommend from")
    parser.add_argument("-k", type=int, default=10, help="recommendations per user")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    target = args.target or f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        return asyncio.run(run_demo(target, args.users, args.source, args.dest, args.k, args.config))
    except grpc.aio.AioRpcError as exc:
        print(f"demo: the gateway at {target} answered {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
