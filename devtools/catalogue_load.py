"""Load a platform's catalogue into a running gateway through UpdateCatalogue: a JSON-lines
file of items, sent in batches, each title embedded through Triton by the gateway.

Each line is one item: {"item_id": "...", "title": "...", "attributes": {"brand": "..."}}
(attributes optional). Progress (items/s, texts/s through the model, time left) is printed
as it goes. The lines acknowledged so far are kept in `<file>.progress`, so a load stopped by
Ctrl-C, a lost connection or a crash resumes where it stopped when run again with the same
file (an upsert sent twice does no harm: the same item gets the same title). Items the
gateway refused go to `<file>.rejected.jsonl` with the reason; the rest still loads.

    python -m devtools.catalogue_load --platform kitchen --file items.jsonl \\
        [--target 127.0.0.1:50051] [--api-key KEY] [--batch 500]
    python -m devtools.catalogue_load --platform kitchen --file items.jsonl --restart  # from line 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from devtools.fleet import service_config
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc


class LoadError(RuntimeError):
    """The file or the gateway stops the load; the message says what to do."""


@dataclass
class Progress:
    """Lines of `file` acknowledged by the gateway, kept beside it."""

    file: Path
    done: int = 0
    applied: int = 0
    rejected: int = 0

    @property
    def path(self) -> Path:
        return self.file.with_name(self.file.name + ".progress")

    def signature(self) -> dict[str, object]:
        stat = self.file.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def load(self, platform: str) -> None:
        """Resume from the saved progress if it is of this very file and platform."""
        if not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        if saved.get("file") != self.signature() or saved.get("platform") != platform:
            raise LoadError(f"{self.path} is the progress of another version of {self.file.name} or "
                            f"another platform: run with --restart to load the file from its first line")
        self.done, self.applied, self.rejected = saved["lines_done"], saved["applied"], saved["rejected"]

    def save(self, platform: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"file": self.signature(), "platform": platform, "lines_done": self.done,
                                   "applied": self.applied, "rejected": self.rejected}))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old progress or the new one


def items(path: Path, skip: int) -> Iterator[tuple[int, pb.CatalogueItem | str]]:
    """(line number from 1, the item or why the line is not one), from line skip + 1 on."""
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, start=1):
            if n <= skip:
                continue
            try:
                row = json.loads(line)
                attributes = {str(k): str(v) for k, v in (row.get("attributes") or {}).items()}
                item = pb.CatalogueItem(item_id=str(row["item_id"]), title=str(row["title"]),
                                        attributes=attributes)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                yield n, f"line {n} is not an item: {type(exc).__name__}: {exc}"
                continue
            yield n, item


def batches(path: Path, skip: int, size: int) -> Iterator[tuple[int, list[pb.CatalogueItem], list[str]]]:
    """(last line number, items, unreadable lines' reasons) per batch of `size` lines."""
    batch: list[pb.CatalogueItem] = []
    bad: list[str] = []
    last = skip
    for n, item in items(path, skip):
        last = n
        if isinstance(item, str):
            bad.append(item)
        else:
            batch.append(item)
        if len(batch) + len(bad) >= size:
            yield last, batch, bad
            batch, bad = [], []
    if batch or bad:
        yield last, batch, bad


async def load(args: argparse.Namespace) -> int:
    progress = Progress(args.file)
    if args.restart:
        progress.path.unlink(missing_ok=True)
    progress.load(args.platform)
    total = sum(1 for _ in args.file.open(encoding="utf-8"))
    if progress.done:
        print(f"resuming at line {progress.done + 1} of {total} ({progress.applied} items loaded before)",
              flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    metadata = (("x-api-key", args.api_key),) if args.api_key else None
    rejected_path = args.file.with_name(args.file.name + ".rejected.jsonl")
    started, sent = time.monotonic(), 0
    options = [("grpc.service_config", json.dumps(service_config())), ("grpc.enable_retries", 1),
               ("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        with rejected_path.open("a", encoding="utf-8") as rejected:
            for last, batch, bad in batches(args.file, progress.done, args.batch):
                if stop.is_set():
                    break
                for reason in bad:
                    rejected.write(json.dumps({"error_code": "INVALID_ARGUMENT", "error": reason}) + "\n")
                if batch:
                    try:
                        reply = await stub.UpdateCatalogue(
                            pb.UpdateCatalogueRequest(platform=args.platform, upserts=batch),
                            metadata=metadata, timeout=args.timeout)
                    except grpc.aio.AioRpcError as exc:
                        raise LoadError(f"the gateway refused lines {progress.done + 1}..{last}: "
                                        f"{exc.code().name}: {exc.details()}; fix that and run again to "
                                        f"resume from line {progress.done + 1}") from exc
                    for result in reply.results:
                        if not result.applied:
                            rejected.write(json.dumps({"item_id": result.item_id, "error": result.error,
                                                       "error_code": result.error_code}) + "\n")
                    progress.applied += reply.applied
                    progress.rejected += reply.rejected
                    sent += len(batch)
                progress.rejected += len(bad)
                progress.done = last
                progress.save(args.platform)
                rejected.flush()
                elapsed = time.monotonic() - started
                rate = sent / elapsed if elapsed > 0 else 0.0
                left = (total - progress.done) / rate if rate > 0 else float("nan")
                print(f"{progress.done}/{total} lines ({100 * progress.done / max(total, 1):.1f}%): "
                      f"{progress.applied} items loaded, {progress.rejected} refused; {rate:.0f} titles/s "
                      f"through the model; ~{left:.0f}s left", flush=True)
    elapsed = time.monotonic() - started
    if stop.is_set() and progress.done < total:
        print(f"stopped at line {progress.done} of {total}: run the same command again to resume", flush=True)
        return 130
    print(f"done: {progress.applied} items loaded, {progress.rejected} refused (see {rejected_path.name}); "
          f"{sent} titles in {elapsed:.1f}s, {sent / max(elapsed, 1e-9):.0f} titles/s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.catalogue_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", required=True, help="the platform whose catalogue this is")
    parser.add_argument("--file", type=Path, required=True, help="JSON lines, one item each")
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway's host:port")
    parser.add_argument("--api-key", default=os.environ.get("INTEREST_API_KEY", ""),
                        help="the platform's (or the operator's) API key (default $INTEREST_API_KEY)")
    parser.add_argument("--batch", type=int, default=500,
                        help="items per UpdateCatalogue call (at most the gateway's "
                             "max_catalogue_changes_per_request, 1000 by default)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    parser.add_argument("--restart", action="store_true", help="forget the saved progress; load from line 1")
    args = parser.parse_args(argv)
    if not args.file.exists():
        parser.error(f"{args.file} does not exist")
    try:
        return asyncio.run(load(args))
    except LoadError as exc:
        print(f"catalogue load stopped: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
