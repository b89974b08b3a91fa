"""Demo client: real held-out users' history on one platform in, another platform's
recommendations out (by default the first two configured platforms: grocery -> home goods).

For each test user of the platforms' dataset it ingests their source-platform events through
IngestEvents, asks Recommend for the target platform, and prints the titles, marking the items
the user really took there (which the model never saw).

    python -m devtools.demo [--users 3] [--target localhost:50051] [--config FILE]
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
from interest_core.config import Settings, load_settings
from interest_model.datasets import load_dataset


def demo_platforms(settings: Settings, source: str | None, dest: str | None) -> tuple[str, str]:
    """(source, dest): the given ones, else the first two configured platforms; both must be
    configured and come from one dataset (whose test users have history on both)."""
    names = list(settings.platforms)
    source = source or names[0]
    dest = dest or next((n for n in names if n != source), source)
    for name in (source, dest):
        if name not in settings.platforms:
            raise ValueError(f"platform {name!r} is not configured; configured: {', '.join(names)}")
    if source == dest or settings.platforms[source].dataset != settings.platforms[dest].dataset:
        raise ValueError(f"the demo needs two platforms of one dataset, got {source!r} and {dest!r}")
    return source, dest


async def run_demo(target: str, users: int, source: str | None, dest: str | None, k: int,
                   config: Path | None) -> int:
    settings = load_settings(config)
    source, dest = demo_platforms(settings, source, dest)
    data = load_dataset(settings, settings.platforms[source].dataset)
    src_cat, dst_cat = data.catalogues[source], data.catalogues[dest]
    event_type = settings.platforms[source].event_types[0]
    people = [u for u in data.split("test") if len(u.on(source)) >= 3][:users]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        for person in people:
            history = person.on(source)
            truth = {dst_cat.item_ids[i] for i in person.on(dest)}
            user_id = f"demo-test-user-{person.user_key[:12]}"
            await stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), timeout=10)
            await stub.SetConsent(pb.SetConsentRequest(user_id=user_id, migrate=True), timeout=10)
            events = [pb.BehaviorEvent(user_id=user_id, item_id=src_cat.item_ids[i],
                                       item_text=src_cat.titles[i], event_type=event_type,
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
                                                          event_type=event_type)]), timeout=10)
            enc_ms = (time.perf_counter() - started) * 1000
            print(f"\n=== held-out user {person.user_key[:12]}: {ingest.accepted} {source} events in, "
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
                if item.HasField("category"):
                    print(f"        {why(item, rec)}")
            profile = await stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=10)
            print("  " + interests_line(profile, rec, source, dest))
            hits = sum(item.item_id in truth for item in rec.items)
            print(f"  {hits} of the top {k} are among the {len(truth)} {dest} items this user took")
            print(f"  latency seen by this client: Recommend {rec_ms:.1f} ms over {len(dst_cat)} items; "
                  f"EncodeInterest of one new text {enc_ms:.1f} ms")
    return 0


def why(item: pb.RecommendedItem, rec: pb.RecommendResponse) -> str:
    """The item's interest category, and whether it is one of the user's migrated interests."""
    line = f"category: {item.category.name}"
    if any(c.name == item.category.name for c in rec.interests):
        line += " (one of this user's migrated interests)"
    return line


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
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="gateway address (default from config)")
    parser.add_argument("--users", type=int, default=3, help="held-out users to show")
    parser.add_argument("--source", default=None,
                        help="platform whose history is sent (default: the first configured)")
    parser.add_argument("--dest", default=None,
                        help="platform to recommend from (default: the next configured)")
    parser.add_argument("-k", type=int, default=10, help="recommendations per user")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    target = args.target or f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        return asyncio.run(run_demo(target, args.users, args.source, args.dest, args.k, args.config))
    except ValueError as exc:  # platforms the config cannot demo (demo_platforms), before any call
        parser.error(str(exc))
    except grpc.aio.AioRpcError as exc:
        print(f"demo: the gateway at {target} answered {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
