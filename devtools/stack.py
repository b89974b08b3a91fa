"""Run the stack in the foreground: real Triton (from the nvidia-pytriton wheel) + gateway.

Ctrl-C (or SIGTERM) drains the gateway, then stops Triton cleanly.

    python -m devtools.stack [--demo] [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from devtools.demo import run_demo
from devtools.triton_launcher import TritonStartError, start_triton
from gateway.server import StartupError, install_signal_handlers, run_gateway, setup_logging
from interest_core.config import Settings, load_settings

log = logging.getLogger("interest.serve")


async def _serve(settings: Settings, demo: bool, config: Path | None) -> int:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    try:
        triton = await asyncio.to_thread(start_triton, settings)
    except TritonStartError as exc:
        log.error("%s", exc)
        return 2
    try:
        try:
            gw = await run_gateway(settings)
        except StartupError as exc:
            log.error("%s", exc)
            return 2
        waiter = asyncio.create_task(gw.serving.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if gw.serving.is_set():
            print(f"\nstack SERVING: gateway gRPC {settings.grpc_host}:{gw.port}, metrics "
                  f":{settings.metrics_port}/metrics, Triton gRPC :{settings.triton_grpc_port} "
                  f"(Ctrl-C stops both)", flush=True)
            if demo:
                try:
                    await run_demo(f"{settings.grpc_host}:{gw.port}", 3, None, None, 10, config)
                    print("\ndemo done; still serving (Ctrl-C stops both servers)", flush=True)
                except grpc.aio.AioRpcError as exc:
                    log.error("demo failed: %s %s; still serving", exc.code().name, exc.details())
                except ValueError as exc:
                    log.error("demo not run: %s; still serving", exc)
        await stop.wait()
        log.info("stopping gateway (grace %.1fs)", settings.shutdown_grace_s)
        await gw.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await gw.stop()
    finally:
        log.info("stopping Triton")
        await asyncio.to_thread(triton.stop)
    log.info("stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="once serving, send demo requests for real held-out users")
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    setup_logging(settings.log_level)
    return asyncio.run(_serve(settings, args.demo, args.config))


if __name__ == "__main__":
    sys.exit(main())
