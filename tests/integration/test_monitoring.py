"""The monitoring config works against the real stack: the REAL Prometheus server scrapes the real
gateway and the real Triton with build/prometheus.yml (targets rewritten to the test's ports), and
every query of the provisioned Grafana dashboard returns data while the stack is under load; the
alerting rules of build/alerts.yml load, evaluate, and read only metrics the stack exports.

Needs the `prometheus` binary: build/install-prometheus.sh installs it (Debian package)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from devtools.triton_launcher import free_port
from gateway.proto.interest.v1 import gateway_pb2 as pb
from interest_core.config import ROOT
from tests.integration.conftest import Stack, prometheus_tool

pytestmark = pytest.mark.integration

BUILD = ROOT / "build"
PROMETHEUS_CONFIG = BUILD / "prometheus.yml"
DASHBOARD = BUILD / "grafana" / "dashboards" / "interest-stack.json"
DATASOURCE = BUILD / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = BUILD / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DATASOURCE_UID = "prometheus"

GATEWAY_JOB, TRITON_JOB = "interest-gateway", "triton"
SCRAPE_INTERVAL = "1s"
# What Grafana would put in for the dashboard's variables. $__rate_interval is >= 4 scrape
# intervals in Grafana; 30s at a 1 s scrape covers the whole load phase, so every rate() sees it.
GRAFANA_VARIABLES = {"__rate_interval": "30s", "platform": ".*"}
MIN_SCRAPES_UNDER_LOAD = 4  # of each target, counted from the start of the load
LOAD_BUDGET_S = 25.0  # bound on the load + query phase; normally it is done in a few seconds
MAX_ROUNDS = 300
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PanelQuery:
    """One target of one dashboard panel, with Grafana's variables already substituted."""

    panel: str
    ref_id: str
    expr: str


@dataclass
class Prometheus:
    """A running Prometheus server child process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def substitute(expr: str) -> str:
    """Replace Grafana variables ($name, ${name}, ${name:format}) the way Grafana would for this test."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"dashboard uses variable ${name}, which this test does not know: "
                                 f"add it to GRAFANA_VARIABLES")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def walk_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All panels, including those nested in (collapsed) rows."""
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(walk_panels(panel.get("panels", [])))
    return out


def load_dashboard() -> dict[str, Any]:
    """The provisioned dashboard JSON, exactly as Grafana reads it."""
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every target expression of every panel, variables substituted."""
    queries = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append(PanelQuery(panel.get("title", f"panel id {panel.get('id')}"),
                                      str(target.get("refId", "?")), substitute(target["expr"])))
    return queries


def render_config(gateway_port: int, triton_port: int) -> str:
    """build/prometheus.yml with the test's targets and a 1 s scrape interval."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL}
    ports = {GATEWAY_JOB: gateway_port, TRITON_JOB: triton_port}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(ports) <= set(jobs), f"build/prometheus.yml must have jobs {sorted(ports)}, has {sorted(jobs)}"
    for name, port in ports.items():
        job = jobs[name]
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    # The copy lives elsewhere: its rule files are build/'s, by absolute path.
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve())
                            for f in config.get("rule_files", [])]
    return str(yaml.safe_dump(config, sort_keys=False))


def http_json(url: str, data: dict[str, str] | None = None, timeout: float = 5.0) -> Any:
    """GET (or form POST when `data` is given) a Prometheus API URL and decode the JSON answer."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' error as JSON
        return json.loads(exc.read() or b"{}")


async def query(prom: Prometheus, expr: str) -> dict[str, Any]:
    """Instant query through /api/v1/query; returns Prometheus' whole answer."""
    answer: dict[str, Any] = await asyncio.to_thread(http_json, f"{prom.url}/api/v1/query", {"query": expr})
    return answer


async def scrape_counts(prom: Prometheus) -> dict[str, int]:
    """How many times Prometheus has scraped each job so far (samples of `up`)."""
    answer = await query(prom, "count_over_time(up[1h])")
    counts = {job: 0 for job in (GATEWAY_JOB, TRITON_JOB)}
    for series in answer.get("data", {}).get("result", []):
        counts[series["metric"].get("job", "")] = int(float(series["value"][1]))
    return counts


async def wait_for(what: str, probe: Callable[[], Awaitable[bool]], prom: Prometheus,
                   timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll the async `probe` until it returns True, bounded by `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if prom.process.poll() is not None:
            raise AssertionError(f"prometheus exited ({prom.process.returncode}) waiting for {what}:\n"
                                 f"{prom.log_tail()}")
        if await probe():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"prometheus: {what} not reached in {timeout_s:.0f}s\n{prom.log_tail()}")


@pytest_asyncio.fixture
async def prometheus(stack: Stack, tmp_path: Path) -> AsyncIterator[Prometheus]:
    """The real Prometheus server scraping this test's gateway and Triton; SIGTERM on teardown."""
    binary = prometheus_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(render_config(stack.metrics_port, stack.triton.metrics_port))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        async def ready() -> bool:
            def get() -> bool:
                try:
                    with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                        return bool(resp.status == 200)
                except (urllib.error.URLError, OSError):
                    return False
            return await asyncio.to_thread(get)

        async def targets_up() -> bool:
            answer = await asyncio.to_thread(http_json, f"{prom.url}/api/v1/targets?state=active")
            health = {t["labels"].get("job"): t["health"] for t in answer["data"]["activeTargets"]}
            return health.get(GATEWAY_JOB) == "up" and health.get(TRITON_JOB) == "up"

        await wait_for("/-/ready", ready, prom)
        await wait_for(f"targets {GATEWAY_JOB} and {TRITON_JOB} up", targets_up, prom)
        yield prom
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def expect_code(call: Any, code: grpc.StatusCode) -> None:
    """Await an RPC that must fail with `code` (the error panels need these)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, f"wanted {code}, got {err.code()}: {err.details()}"
    else:
        raise AssertionError(f"wanted {code}, the call succeeded")


async def load_round(stack: Stack, n: int) -> None:
    """One bounded round of mixed traffic: new texts (Triton calls, cache misses), repeated texts
    (cache hits), accepted and rejected events, successful and failing RPCs."""
    user = "it-monitoring-user"
    platform = ("food", "kitchen")[n % 2]
    events = [
        pb.BehaviorEvent(user_id=user, item_text=f"monitoring load {n}: stoneware mixing bowl",
                         event_type="view"),
        pb.BehaviorEvent(user_id=user, item_text="Organic green tea bags, 100 count", event_type="purchase"),
        pb.BehaviorEvent(user_id=user, item_text="rejected on purpose", event_type="teleport"),
    ]
    ingest = await stack.stub.IngestEvents(pb.IngestEventsRequest(platform=platform, events=events),
                                           timeout=30)
    assert (ingest.accepted, ingest.rejected) == (2, 1)
    for target in ("kitchen", "food"):
        rec = await stack.stub.Recommend(pb.RecommendRequest(user_id=user, target_platform=target, k=10),
                                         timeout=10)
        assert len(rec.items) == 10
    await stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="kitchen", events=[
        pb.BehaviorEvent(item_text=f"monitoring encode {n}: carbon steel wok", event_type="view"),
        pb.BehaviorEvent(item_text="cast iron skillet", event_type="view")]), timeout=30)
    await expect_code(stack.stub.Recommend(
        pb.RecommendRequest(user_id=f"it-monitoring-nobody-{n}", target_platform="kitchen", k=5), timeout=10),
        grpc.StatusCode.NOT_FOUND)
    await expect_code(stack.stub.Recommend(
        pb.RecommendRequest(user_id=user, target_platform="kitchen", k=0), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT)


def describe(result: dict[str, Any]) -> str | None:
    """None when a query answer has at least one non-NaN sample, else what is wrong with it."""
    if result.get("status") != "success":
        return f"query error: {result.get('errorType')}: {result.get('error')}"
    data = result["data"]
    if data["resultType"] == "scalar":
        samples = [data["result"]]
    else:
        samples = [series["value"] for series in data["result"]]
    if not samples:
        return "empty result"
    if all(math.isnan(float(value)) for _, value in samples):
        return f"only NaN ({len(samples)} series)"
    return None


async def failing_queries(prom: Prometheus, queries: list[PanelQuery]) -> list[str]:
    """One line per dashboard query that returns no usable data right now."""
    failures = []
    for q in queries:
        problem = describe(await query(prom, q.expr))
        if problem is not None:
            failures.append(f"panel {q.panel!r} target {q.ref_id}: {q.expr}\n    -> {problem}")
    return failures


def test_dashboard_and_provisioning_are_consistent() -> None:
    """Static checks: every panel is titled, described, has a unit and queries the provisioned datasource."""
    dashboard = load_dashboard()
    assert 35 <= dashboard["schemaVersion"] <= 41
    datasource = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert (datasource["uid"], datasource["type"], datasource["url"]) == (
        DATASOURCE_UID, "prometheus", "http://localhost:9090")
    provider = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"][0]
    assert (ROOT / provider["options"]["path"]).resolve() == DASHBOARD.parent.resolve()
    panels = [p for p in walk_panels(dashboard["panels"]) if p["type"] != "row"]
    titles = [p.get("title", "") for p in panels]
    assert len(titles) == len(set(titles)), "panel titles are unique (test failures name panels by title)"
    for panel in panels:
        name = panel.get("title") or f"panel id {panel.get('id')}"
        assert panel["type"] in {"timeseries", "stat"}, name
        assert panel.get("title") and panel.get("description"), f"{name}: needs a title and a description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: needs a unit"
        assert panel["targets"], f"{name}: has no query"
        for source in [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]:
            assert source is not None and source.get("uid") == DATASOURCE_UID, f"{name}: datasource {source}"
    for variable in dashboard.get("templating", {}).get("list", []):
        assert variable["name"] in GRAFANA_VARIABLES, f"variable {variable['name']} unknown to the test"
    assert dashboard_queries(dashboard), "the dashboard has queries, with only variables the test knows"


async def test_every_dashboard_query_returns_data_from_real_prometheus(
    stack: Stack, prometheus: Prometheus
) -> None:
    """Load over gRPC while the real Prometheus scrapes; then every panel query must return data."""
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard)
    assert queries, "the dashboard has no queries"
    for variable in dashboard.get("templating", {}).get("list", []):
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable.get("definition", ""))
        if match:  # a variable with no values leaves every panel that uses it empty
            metric, label = match.groups()
            values = await asyncio.to_thread(
                http_json, f"{prometheus.url}/api/v1/label/{label}/values?match[]={metric}")
            assert values["data"], f"variable ${variable['name']}: {variable['definition']} has no values"

    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_BUDGET_S
    start = await scrape_counts(prometheus)
    failures: list[str] | None = None
    scraped: dict[str, int] = {}
    next_check = 0.0
    for n in range(MAX_ROUNDS):
        await load_round(stack, n)
        await asyncio.sleep(0.2)
        counts = await scrape_counts(prometheus)
        scraped = {job: counts[job] - start[job] for job in counts}
        if min(scraped.values()) >= MIN_SCRAPES_UNDER_LOAD and loop.time() >= next_check:
            failures = await failing_queries(prometheus, queries)
            if not failures:
                break
            next_check = loop.time() + 1.0  # a scrape later, some rate may have its samples
        if loop.time() > deadline:
            break
    assert failures is not None, (
        f"Prometheus scraped only {scraped} times under load (wanted {MIN_SCRAPES_UNDER_LOAD} each)\n"
        f"{prometheus.log_tail()}")
    assert not failures, (f"{len(failures)} of {len(queries)} dashboard queries return no data under load "
                          f"({n + 1} load rounds, scrapes {scraped}):\n" + "\n".join(failures))


def alert_metrics(expr: str) -> set[str]:
    """Metric names an alert expression reads (label lists of `by (...)`, selectors' matchers,
    functions and PromQL keywords left out)."""
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    names = re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr)
    return {n for n in names if n not in {"or", "and", "unless", "bool"} and not re.fullmatch(r"\d.*", n)}


async def test_alert_rules_load_and_read_real_metrics(stack: Stack, prometheus: Prometheus) -> None:
    """Prometheus loads build/alerts.yml with the shipped config; under load every rule evaluates
    without error, every metric the rules read has series from the real stack, and the rules
    meant to react to this load do: a third of the load's events are rejected on purpose, so
    InterestEventsRejected is pending (its 15 min `for` not yet passed) with the real platform
    label, while the outage and server-error alerts stay inactive."""
    shipped = yaml.safe_load((BUILD / "alerts.yml").read_text())
    expected = {r["alert"]: r["expr"] for g in shipped["groups"] for r in g["rules"]}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_BUDGET_S
    loaded: dict[str, Any] = {}
    active: dict[str, list[dict[str, Any]]] = {}
    for n in range(MAX_ROUNDS):
        await load_round(stack, n)
        await asyncio.sleep(0.2)
        answer = await asyncio.to_thread(http_json, f"{prometheus.url}/api/v1/rules?type=alert")
        loaded = {r["name"]: r for g in answer["data"]["groups"] for r in g["rules"]}
        active = {name: r.get("alerts", []) for name, r in loaded.items()}
        evaluated = loaded and all(r["health"] == "ok" for r in loaded.values())
        if (evaluated and active.get("InterestEventsRejected")) or loop.time() > deadline:
            break
    assert set(loaded) == set(expected), (
        f"Prometheus loaded {sorted(loaded)}, build/alerts.yml has {sorted(expected)}")
    broken = {name: (r["health"], r.get("lastError")) for name, r in loaded.items() if r["health"] != "ok"}
    assert not broken, f"alert rules that do not evaluate: {broken}\n{prometheus.log_tail()}"
    missing = []
    for name, expr in expected.items():
        for metric in sorted(alert_metrics(expr)):
            if describe(await query(prometheus, f"count({metric})")) is not None:
                missing.append(f"{name}: {metric}")
    assert not missing, f"alert rules read metrics the stack does not export: {missing}"
    rejected = active.get("InterestEventsRejected", [])
    assert rejected, f"InterestEventsRejected did not react to the rejected events; active: {active}"
    assert {a["state"] for a in rejected} == {"pending"}
    assert {a["labels"]["platform"] for a in rejected} <= {"food", "kitchen"}
    quiet = ("InterestGatewayDown", "InterestTritonNotReady", "InterestProfileStoreDown",
             "InterestProfileStorePoolSaturated", "InterestServerErrorsHigh",
             "InterestServerErrorsElevated", "InterestShedding")
    noisy = {name: active[name] for name in quiet if active.get(name)}
    if {a["state"] for a in noisy.get("InterestGatewayDown", [])} == {"pending"}:
        # This pytest process serves the gateway's /metrics and generates the load: one scrape
        # may miss its 1 s timeout, and the alert is then rightly pending (its 1 m `for` keeps
        # it from paging). Accepted only where Prometheus did record such a failed scrape.
        missed = await query(prometheus, f'min_over_time(up{{job="{GATEWAY_JOB}"}}[5m]) == 0')
        if describe(missed) is None:
            del noisy["InterestGatewayDown"]
    assert not noisy, f"active on a healthy stack: {active}"
