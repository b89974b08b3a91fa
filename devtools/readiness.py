"""Wait for a gateway started as a child process to report SERVING on gRPC health."""

from __future__ import annotations

import asyncio
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_serving(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 900) -> None:
    """Poll 127.0.0.1:`port` until SERVING; raise RuntimeError naming `what` (the process and
    where its log is) if it exits first or is not SERVING within `timeout_s`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited during start-up")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"{what} not SERVING after {timeout_s:.0f} s")
