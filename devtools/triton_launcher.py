"""Start the real Triton Inference Server shipped in the `nvidia-pytriton` wheel (CPU).

Lays out a backend directory (python backend + the stub for the running Python), puts the
wheel's libraries on LD_LIBRARY_PATH and this virtual environment first on PATH (the stub
runs model.py with the first `python3` there), then polls readiness.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from interest_core.config import ROOT, Settings

log = logging.getLogger("interest.triton")


class TritonStartError(RuntimeError):
    """Triton could not be started or did not become ready."""


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - install problem
        raise TritonStartError("nvidia-pytriton is not installed: run `make setup`") from exc
    return Path(pytriton.__file__).resolve().parent


def prepare_backend_dir(target: Path) -> Path:
    """Create `target/python/` with libtriton_python.so, the utils and this Python's stub."""
    server = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonStartError(f"pytriton ships no python backend stub for Python {version}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (server / "backends" / "python" / "libtriton_python.so",
                server / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dest = python_dir / src.name
        if not dest.exists() or dest.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dest)
    return target


@dataclass
class TritonServer:
    """A running `tritonserver` child process on loopback ports."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def is_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with status {self.process.returncode}; "
                    f"last log lines:\n{tail(self.log_path)}"
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT (Triton's clean shutdown), then SIGKILL if it does not exit in time; then
        reap what is left of its process group (python-backend stubs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL Triton and its stubs at once (fault injection)."""
        self._kill_group()
        self.process.wait()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nobody is listening on right now (tests, bench)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_triton(
    settings: Settings,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    log_path: Path | None = None,
    wait: bool = True,
    stdout: IO[bytes] | None = None,
) -> TritonServer:
    """Start tritonserver on settings.model_repository; ports default to the settings'."""
    binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    model_dir = settings.model_repository / settings.model_name
    if not (model_dir / "config.pbtxt").exists():
        raise TritonStartError(f"no model installed at {model_dir}: run `make engine` first")
    if "tensorrt_plan" in (model_dir / "config.pbtxt").read_text():
        raise TritonStartError(
            f"{model_dir} holds a TensorRT plan, which the CPU Triton of the nvidia-pytriton wheel "
            "cannot run: serve it with the NGC tritonserver container, or `make engine TARGET=cpu`"
        )
    backends = prepare_backend_dir(settings.var_dir / "triton" / "backends")
    http_port = http_port or settings.triton_http_port
    grpc_port = grpc_port or settings.triton_grpc_port
    metrics_port = metrics_port or settings.triton_metrics_port
    for label, port in (("HTTP", http_port), ("gRPC", grpc_port), ("metrics", metrics_port)):
        if port_in_use(port):
            raise TritonStartError(
                f"Triton {label} port {port} is already in use (another Triton running?); stop it "
                f"or choose another port (INTEREST_TRITON_{label.upper()}_PORT)"
            )
    log_path = log_path or settings.var_dir / "triton" / f"tritonserver-{grpc_port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [
        str(binary),
        f"--model-repository={settings.model_repository}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]
    log.info("starting tritonserver: grpc %d, http %d, metrics %d (log %s)",
             grpc_port, http_port, metrics_port, log_path)
    out = stdout if stdout is not None else log_path.open("wb")
    process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = TritonServer(process, http_port, grpc_port, metrics_port, log_path)
    if wait:
        try:
            server.wait_ready(settings.triton_ready_timeout_s)
        except TritonStartError:
            server.stop()
            raise
    log.info("tritonserver ready (pid %d)", process.pid)
    return server
