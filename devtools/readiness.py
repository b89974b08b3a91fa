"""Wait until a gateway's gRPC health reports a status: the one readiness poll that the stack,
the served evaluation, the benchmark and the integration tests share."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


async def wait_serving(target: int | str | health_pb2_grpc.HealthStub,
                       proc: subprocess.Popen[bytes] | None = None, what: str = "the gateway",
                       timeout_s: float = 900.0, want: int = SERVING) -> None:
    """Poll the health of `target` (a port on 127.0.0.1, "host:port", or a HealthStub on an open
    channel) until it reports `want`; a call that fails meanwhile (not listening yet) is retried.
    Raises RuntimeError naming `what` (the process and where its log is) if `proc` exits first
    or the status is not reached within `timeout_s`."""
    if not isinstance(target, health_pb2_grpc.HealthStub):
        address = f"127.0.0.1:{target}" if isinstance(target, int) else target
        async with grpc.aio.insecure_channel(address) as channel:
            await wait_serving(health_pb2_grpc.HealthStub(channel), proc, what, timeout_s, want)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    status = None
    while loop.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        try:
            status = (await target.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            if status == want:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.25)
    names = health_pb2.HealthCheckResponse.ServingStatus
    raise RuntimeError(f"{what} stayed {names.Name(status) if status is not None else 'unreachable'}, "
                       f"not {names.Name(want)}, for {timeout_s:.0f} s")
