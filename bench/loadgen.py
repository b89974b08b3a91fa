"""gRPC load generator: closed loop (N workers back to back) and open loop (fixed arrival
rate, latency measured from the scheduled send time so queueing is not hidden)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

Call = Callable[[int], Awaitable[object]]


@dataclass
class RunResult:
    mode: str
    level: float  # concurrency (closed) or offered rate in requests/s (open)
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_wall_s: float = 0.0  # the window CPU use is divided by (warm-up included)
    # open loop: (sent, s after the run's start; latency in s; "OK" or the status name) per call
    timeline: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, object]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "mode": self.mode,
            "level": self.level,
            "requests_ok": self.ok,
            "errors": dict(self.errors),
            "wall_s": round(self.wall_s, 2),
            "throughput_rps": round(self.ok / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "processes": self.cpu,
        }


def _record(result: RunResult, start: float, exc: BaseException | None, sent: float | None = None) -> None:
    """One call's outcome; with `sent` (s after the run's start), also on the timeline."""
    latency = time.perf_counter() - start
    code = "OK"
    if exc is None:
        result.latencies_ms.append(latency * 1000)
    else:
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        result.errors[code] = result.errors.get(code, 0) + 1
    if sent is not None:
        result.timeline.append((sent, latency, code))


async def closed_loop(call: Call, concurrency: int, duration_s: float, warmup_s: float = 1.0) -> RunResult:
    """`concurrency` workers send back to back for warmup + duration; only the duration counts."""
    counter = itertools.count()
    result = RunResult("closed", concurrency, duration_s)
    loop = asyncio.get_running_loop()
    t_measure = loop.time() + warmup_s
    t_end = t_measure + duration_s

    async def worker() -> None:
        while loop.time() < t_end:
            start = time.perf_counter()
            counting = loop.time() >= t_measure
            try:
                await call(next(counter))
                exc = None
            except Exception as e:  # every failure is counted by its gRPC status
                exc = e
            if counting and loop.time() <= t_end:
                _record(result, start, exc)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.cpu_wall_s = warmup_s + duration_s
    return result


async def open_loop(call: Call, rate: float, duration_s: float, max_in_flight: int = 4000) -> RunResult:
    """Send at `rate` requests/s for `duration_s` whatever the replies; bounded in flight."""
    result = RunResult("open", rate, duration_s)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        start = time.perf_counter() - max(loop.time() - scheduled, 0.0)
        try:
            await call(i)
            exc = None
        except Exception as e:
            exc = e
        _record(result, start, exc, sent=scheduled - t0)

    n = int(rate * duration_s)
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            result.errors["CLIENT_BACKLOG"] = result.errors.get("CLIENT_BACKLOG", 0) + 1
            continue
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    result.wall_s = max(loop.time() - t0, duration_s)
    result.cpu_wall_s = loop.time() - t0
    return result


def pick(seq: Sequence[object], i: int) -> object:
    return seq[i % len(seq)]
