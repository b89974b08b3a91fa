"""Several gateway processes on one Triton and one profile store: the fleet shape of
docs/deployment.md on one machine, for the fleet integration tests and the scale-out bench.

Each gateway is a real `python -m gateway.server` OS process with its own gRPC and metrics
ports, configured through the environment as a container would be. `client_channel` opens one
channel over all of them the way a platform service behind a load balancer would: gRPC's
round_robin over the addresses, client-side health checking (a gateway that is not SERVING
gets no calls), and a retry policy on UNAVAILABLE (docs/operations.md, "Client settings").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from devtools.readiness import wait_serving
from devtools.triton_launcher import free_port
from interest_core.config import ROOT

SERVICE = "interest.v1.InterestGateway"


def service_config(max_attempts: int = 5, initial_backoff_s: float = 0.1,
                   max_backoff_s: float = 1.0) -> dict[str, object]:
    """The gRPC service config a client of the fleet should use (gRPC A6 retries, A17 client-side
    health checking): round_robin over the gateways, only SERVING ones picked, and every
    InterestGateway call retried on UNAVAILABLE (a gateway draining or gone, a profile store
    briefly away) with exponential backoff."""
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE},
        "methodConfig": [{
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": f"{initial_backoff_s}s",
                "maxBackoff": f"{max_backoff_s}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    }


def client_channel(ports: Sequence[int], config: Mapping[str, object] | None = None) -> grpc.aio.Channel:
    """One channel over the gateways on 127.0.0.1:`ports` with `service_config()` (or `config`)."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    options = [("grpc.service_config", json.dumps(config or service_config())),
               ("grpc.enable_retries", 1)]
    return grpc.aio.insecure_channel(target, options=options)


@dataclass
class GatewayProcess:
    """One `python -m gateway.server` process; its output goes to `log_path`."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int
    metrics_port: int
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Launch it (again, after a stop or kill) on the same ports; returns at once."""
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "gateway.server"], env=self.env, cwd=ROOT,
                                      stdout=self._log, stderr=subprocess.STDOUT)
        self._log.close()  # the child holds it

    async def wait_serving(self, timeout_s: float = 180.0) -> None:
        await wait_serving(self.port, self.popen, f"gateway {self.name} (log {self.log_path})", timeout_s)

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (drain, then exit, as Kubernetes stops a pod); SIGKILL if it outlives
        `timeout_s`. Returns the exit status."""
        return self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL: the process dies at once, mid-call (a crash, an OOM kill)."""
        return self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout_s: float) -> int:
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def gateway_process(name: str, logs: Path, triton_grpc_port: int, profile_store: str | None,
                    var_dir: Path, **settings: object) -> GatewayProcess:
    """A gateway process (not started) on free ports, using Triton on 127.0.0.1:`triton_grpc_port`
    and the profile store `profile_store` (None: SQLite under `var_dir`). `settings` are more
    INTEREST_* settings by field name (`log_level="WARNING"` -> INTEREST_LOG_LEVEL)."""
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "INTEREST_GRPC_HOST": "127.0.0.1",
        "INTEREST_GRPC_PORT": str(port),
        "INTEREST_METRICS_PORT": str(metrics_port),
        "INTEREST_TRITON_GRPC_PORT": str(triton_grpc_port),
        "INTEREST_VAR_DIR": str(var_dir),
    })
    if profile_store is not None:
        env["INTEREST_PROFILE_STORE"] = profile_store
    env.update({f"INTEREST_{key.upper()}": str(value) for key, value in settings.items()})
    logs.mkdir(parents=True, exist_ok=True)
    return GatewayProcess(name, env, logs / f"{name}.log", port, metrics_port)
