"""Start-up time of the stack: from launching it as `make serve` does (`python -m devtools.stack`:
Triton, then the gateway) to the gateway's gRPC health answering SERVING, on free ports.

    python -m bench.startup          # needs `make engine`; prints the seconds, var/bench/startup.json
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.outputs import write_json
from devtools.triton_launcher import free_port
from interest_core.config import ROOT

STARTUP_TARGET_S = 20.0  # `make serve` to SERVING, after `make engine`


def stack_env(var: Path) -> tuple[dict[str, str], int]:
    """The environment of a stack on free ports with its state under `var`; its gRPC port."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "INTEREST_GRPC_PORT": str(port), "INTEREST_METRICS_PORT": str(free_port()),
        "INTEREST_TRITON_HTTP_PORT": str(free_port()), "INTEREST_TRITON_GRPC_PORT": str(free_port()),
        "INTEREST_TRITON_METRICS_PORT": str(free_port()), "INTEREST_VAR_DIR": str(var),
    })
    return env, port


async def poll_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float, period_s: float = 0.05
                       ) -> None:
    """Return as soon as 127.0.0.1:`port` answers SERVING; RuntimeError if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the stack exited with status {proc.returncode} before SERVING")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(period_s)
    raise RuntimeError(f"the stack was not SERVING within {timeout_s:.0f} s")


def measure_startup(logs: Path, var: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Launch `python -m devtools.stack`, time it to gRPC SERVING, then stop it (SIGINT, as
    Ctrl-C does). Returns {"serving_s": seconds}."""
    env, port = stack_env(var)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "startup-stack.log"
    with log_path.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "devtools.stack"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            asyncio.run(poll_serving(port, proc, timeout_s))
            serving_s = time.monotonic() - started
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (log {log_path})") from exc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {"serving_s": round(serving_s, 2)}


def main() -> int:
    result = measure_startup(ROOT / "var" / "bench" / "logs", ROOT / "var" / "bench" / "startup")
    path = write_json("startup.json", result)
    print(f"stack SERVING {result['serving_s']:.2f} s after launch (target < {STARTUP_TARGET_S:g} s); "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
