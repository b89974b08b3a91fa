"""Session fixtures: build the engine with the real CLIs on a slice of the real data, start
the REAL Triton server on free ports, and the real gateway in-process on port 0; a REAL
PostgreSQL server (a throwaway cluster) for the profile store's PostgreSQL engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import start_http_server

from devtools.postgres_launcher import PostgresServer, running_postgres
from devtools.readiness import wait_serving
from devtools.triton_launcher import TritonServer, free_port, start_triton
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import Gateway, create_server
from interest_core.config import ROOT, Settings, load_settings
from interest_model.backbone import is_checkpoint

CATALOGUE_SLICE = 1500  # items per platform in tests; `make up` uses all of them
TRAINED = ROOT / "models" / "amazon-food-kitchen"  # what `make train` wrote, committed


def prometheus_tool(name: str) -> str:
    """`prometheus` or `promtool` (PATH, then the Debian package's /usr/bin); fails the test if
    absent: build/install-prometheus.sh installs both, and `make test` runs it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        pytest.fail(f"`{name}` is not installed: run build/install-prometheus.sh (installs the Debian "
                    "package `prometheus`, which ships it)")
    return found


def scrape_metrics(port: int) -> dict[str, float]:
    """A gateway's /metrics: each sample line's name-with-labels and value."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric_total(samples: dict[str, float], metric: str, **labels: str) -> float:
    """The sum of `metric`'s samples carrying these label values (0 when none)."""
    return sum(v for k, v in samples.items() if (k == metric or k.startswith(metric + "{"))
               and all(f'{lk}="{lv}"' in k for lk, lv in labels.items()))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session: a new cluster in a temporary folder on a free
    port (devtools/postgres_launcher.py), stopped and removed at the end."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session's server, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Stack:
    settings: Settings
    triton: TritonServer
    gateway: Gateway
    channel: grpc.aio.Channel
    stub: pb_grpc.InterestGatewayStub
    health: health_pb2_grpc.HealthStub
    metrics_port: int
    env: dict[str, str]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack_env(workdir: Path) -> Iterator[dict[str, str]]:
    """INTEREST_* overrides pointing the whole stack at a temporary repository and state."""
    overrides = {
        "INTEREST_MODEL_REPOSITORY": str(workdir / "model_repository"),
        "INTEREST_VAR_DIR": str(workdir / "var"),
        "INTEREST_CATALOGUE_LIMIT": str(CATALOGUE_SLICE),
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    yield dict(os.environ)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                          text=True, check=False, timeout=600)


def run_steps(steps: list[tuple[str, ...]], env: dict[str, str]) -> None:
    """Run each (module, *args) CLI in turn, as `make engine` does; fail on the first error."""
    for module, *args in steps:
        done = run_cli(module, *args, env=env)
        assert done.returncode == 0, f"{module} failed:\n{done.stdout}\n{done.stderr}"


@dataclass
class Served:
    """A second stack: its own real Triton and an in-process gateway in front of it."""

    triton: TritonServer
    gateway: Gateway
    metrics: GatewayMetrics
    stub: pb_grpc.InterestGatewayStub


@contextlib.asynccontextmanager
async def serve_stack(settings: Settings) -> AsyncIterator[Served]:
    """Start the real Triton on settings.model_repository and a gateway with `settings`, wait
    until it is SERVING, and stop both afterwards."""
    triton = start_triton(settings)
    metrics = GatewayMetrics()
    gateway = create_server(settings, metrics, triton_url=triton.grpc_url, port=0)
    channel: grpc.aio.Channel | None = None
    try:
        await gateway.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        await wait_serving(health_pb2_grpc.HealthStub(channel))
        yield Served(triton, gateway, metrics, pb_grpc.InterestGatewayStub(channel))
    finally:
        if channel is not None:
            await channel.close(None)
        await gateway.stop(grace=1.0)
        triton.stop()


@pytest.fixture(scope="session")
def engine(workdir: Path, stack_env: dict[str, str]) -> Path:
    """export -> int8 -> validate -> install of the committed trained checkpoint, exactly as
    `make engine` runs them."""
    art = workdir / "artifacts"
    assert is_checkpoint(TRAINED), f"{TRAINED} is missing: the trained checkpoint is committed"
    steps = [
        ("quantize.export", "--out", str(art / "model.fp32.onnx"), "--checkpoint", str(TRAINED)),
        ("quantize.int8", "--fp32", str(art / "model.fp32.onnx"), "--out", str(art / "model.int8.onnx"),
         "--activations", "uint8",
         "--calib-texts", "128"),
        ("quantize.validate", "--reference", str(art / "model.fp32.onnx"), "--candidate",
         str(art / "model.int8.onnx"), "--report", str(art / "validation.json"), "--texts", "256"),
        ("quantize.install", "--onnx", str(art / "model.int8.onnx"), "--report",
         str(art / "validation.json"), "--target", "cpu", "--checkpoint", str(TRAINED)),
    ]
    run_steps(steps, stack_env)
    return art


@pytest.fixture(scope="session")
def settings(engine: Path, stack_env: dict[str, str]) -> Settings:
    return load_settings(grpc_port=0, metrics_port=free_port(), triton_http_port=free_port(),
                         triton_grpc_port=free_port(), triton_metrics_port=free_port())


@pytest.fixture(scope="session")
def triton(settings: Settings) -> Iterator[TritonServer]:
    server = start_triton(settings)
    yield server
    server.stop()



@pytest_asyncio.fixture(scope="session")
async def stack(settings: Settings, triton: TritonServer) -> AsyncIterator[Stack]:
    metrics = GatewayMetrics()
    metrics.watch_gc()  # as gateway.server.run_gateway does
    http_server, _ = start_http_server(settings.metrics_port, addr="127.0.0.1", registry=metrics.registry)
    gateway = create_server(settings, metrics, triton_url=triton.grpc_url, port=0)
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    health = health_pb2_grpc.HealthStub(channel)
    await wait_serving(health)
    yield Stack(settings, triton, gateway, channel, pb_grpc.InterestGatewayStub(channel), health,
                settings.metrics_port, dict(os.environ))
    await channel.close(None)
    await gateway.stop(grace=1.0)
    http_server.shutdown()
    metrics.unwatch_gc()


def unseen_events(tag: str, n: int, long: bool = False) -> list[pb.BehaviorEvent]:
    """n texts no cache has seen; `long` ones are ~60 tokens each, so BERT takes a while."""
    extra = " with a glazed finish, gift box, dishwasher safe, microwave safe, 12 ounce" * 3 if long else ""
    return [pb.BehaviorEvent(item_text=f"{tag} handmade ceramic mug number {i}{extra}", event_type="view")
            for i in range(n)]
