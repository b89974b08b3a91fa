"""The alerting rules of build/alerts.yml, checked and unit-tested with the REAL `promtool`
(Debian package `prometheus`, which build/install-prometheus.sh installs): on synthetic metric
series over simulated time, each alert fires when it should, with the labels and summary an
on-call engineer reads, and stays quiet on healthy traffic and before its `for` has passed.
test_monitoring.py loads the same rules into the real Prometheus scraping the real stack."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from interest_core.config import ROOT
from tests.integration.conftest import prometheus_tool

pytestmark = pytest.mark.integration

ALERTS = ROOT / "build" / "alerts.yml"
SEVERITIES = {"page", "warning"}
REFUSED = "interest_requests_refused_total"
SERVICE = {"grpc_service": "interest.v1.InterestGateway", "grpc_method": "Recommend", "grpc_type": "unary"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def histogram(name: str, labels: dict[str, str], per_minute: dict[str, int]) -> list[dict[str, str]]:
    """Cumulative bucket series of a histogram observing `per_minute[le]` values at or under each
    bound every minute (so each bucket grows linearly), for 30 minutes."""
    return [series(f"{name}_bucket", {**labels, "le": le}, f"0+{count}x30")
            for le, count in per_minute.items()]


def alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    """One check: at `at`, `name` fires exactly for the `expected` (labels, plus "summary")."""
    out = []
    for exp in expected:
        labels = {k: v for k, v in exp.items() if k != "summary"}
        out.append({"exp_labels": labels, "exp_annotations": {"summary": exp["summary"]}})
    return {"eval_time": at, "alertname": name, "exp_alerts": out}


# Each case: synthetic series (one sample a minute) and what every alert must do at given times.
CASES: list[dict[str, Any]] = [
    {  # the gateway stops answering scrapes at minute 2
        "input_series": [series("up", {"job": "interest-gateway", "instance": "127.0.0.1:9464"},
                                "1 1 0 0 0 0")],
        "alert_rule_test": [
            alert("InterestGatewayDown", "1m"),
            alert("InterestGatewayDown", "2m"),  # down, but not yet for a minute
            alert("InterestGatewayDown", "4m", {
                "severity": "page", "job": "interest-gateway", "instance": "127.0.0.1:9464",
                "summary": "The interest gateway at 127.0.0.1:9464 does not answer Prometheus"}),
        ],
    },
    {  # the gateway's health check loses Triton at minute 2
        "input_series": [series("interest_triton_ready", {"instance": "127.0.0.1:9464"}, "1 1 0 0 0 0")],
        "alert_rule_test": [
            alert("InterestTritonNotReady", "1m"),
            alert("InterestTritonNotReady", "4m", {
                "severity": "page",
                "summary": "Triton has not answered ready to the gateway for over a minute"}),
        ],
    },
    {  # the gateway's health check loses the profile store at minute 2
        "input_series": [series("interest_profile_store_up", {"instance": "127.0.0.1:9464"},
                                "1 1 0 0 0 0")],
        "alert_rule_test": [
            alert("InterestProfileStoreDown", "1m"),
            alert("InterestProfileStoreDown", "4m", {
                "severity": "page",
                "summary": "The profile store has not answered a gateway for over a minute"}),
        ],
    },
    {  # calls wait 0.8 s per second for a pooled connection; 0.2 s/s is not a saturated pool
        "input_series": [
            series("interest_profile_store_pool_wait_seconds_total", {"instance": "10.0.0.1:9464"},
                   "0+48x30"),
            series("interest_profile_store_pool_wait_seconds_total", {"instance": "10.0.0.2:9464"},
                   "0+12x30"),
        ],
        "alert_rule_test": [
            alert("InterestProfileStorePoolSaturated", "8m"),
            alert("InterestProfileStorePoolSaturated", "20m", {
                "severity": "warning", "instance": "10.0.0.1:9464",
                "summary": "Calls wait for a PostgreSQL connection at 10.0.0.1:9464"}),
        ],
    },
    {  # 10% of calls UNAVAILABLE: pages after 5 minutes; the 1% warning needs 15
        "input_series": [
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "OK"}, "0+90x30"),
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "UNAVAILABLE"}, "0+10x30"),
        ],
        "alert_rule_test": [
            alert("InterestServerErrorsHigh", "3m"),
            alert("InterestServerErrorsHigh", "12m", {
                "severity": "page", "summary": "10% of gateway calls fail on the server side"}),
            alert("InterestServerErrorsElevated", "12m"),
            alert("InterestServerErrorsElevated", "25m", {
                "severity": "warning", "summary": "10% of gateway calls fail on the server side"}),
        ],
    },
    {  # callers' own mistakes (a third of all calls) are not server errors
        "input_series": [
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "OK"}, "0+100x30"),
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "INVALID_ARGUMENT"}, "0+30x30"),
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "NOT_FOUND"}, "0+20x30"),
        ],
        "alert_rule_test": [alert("InterestServerErrorsHigh", "25m"),
                            alert("InterestServerErrorsElevated", "25m")],
    },
    {  # 3 in 100 calls refused as overloaded: a warning after 10 minutes; 1 in 200 is not one
        "input_series": [
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "OK"}, "0+97x30"),
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "RESOURCE_EXHAUSTED"}, "0+3x30"),
        ],
        "alert_rule_test": [
            alert("InterestShedding", "5m"),
            alert("InterestShedding", "15m", {
                "severity": "warning", "summary": "The gateway refuses 3% of calls as overloaded"}),
            alert("InterestServerErrorsElevated", "25m"),  # shedding is not a server error
        ],
    },
    {
        "input_series": [
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "OK"}, "0+199x30"),
            series("grpc_server_handled_total", {**SERVICE, "grpc_code": "RESOURCE_EXHAUSTED"}, "0+1x30"),
        ],
        "alert_rule_test": [alert("InterestShedding", "25m")],
    },
    {  # Recommend: every call between 1 and 2.5 s (p99 2.485 s); EncodeInterest between 0.25 and
        # 0.5 s (p99 0.4975 s); IngestEvents within 5 ms
        "input_series": [
            *histogram("interest_total_seconds", {"rpc": "Recommend", "platform": "kitchen"},
                       {"0.005": 0, "0.25": 0, "0.5": 0, "1.0": 0, "2.5": 100, "+Inf": 100}),
            *histogram("interest_total_seconds", {"rpc": "EncodeInterest", "platform": "food"},
                       {"0.005": 0, "0.25": 0, "0.5": 100, "1.0": 100, "2.5": 100, "+Inf": 100}),
            *histogram("interest_total_seconds", {"rpc": "IngestEvents", "platform": "food"},
                       {"0.005": 100, "0.25": 100, "0.5": 100, "1.0": 100, "2.5": 100, "+Inf": 100}),
        ],
        "alert_rule_test": [
            alert("InterestLatencyCritical", "3m"),
            alert("InterestLatencyCritical", "12m", {
                "severity": "page", "rpc": "Recommend", "summary": "Recommend p99 is 2.485s at the gateway"}),
            alert("InterestLatencyHigh", "12m"),
            alert("InterestLatencyHigh", "25m",
                  {"severity": "warning", "rpc": "EncodeInterest",
                   "summary": "EncodeInterest p99 is 497.5ms at the gateway"},
                  {"severity": "warning", "rpc": "Recommend",
                   "summary": "Recommend p99 is 2.485s at the gateway"}),
        ],
    },
    {  # profile-store commits between 0.1 and 0.25 s (p99 0.2485 s)
        "input_series": histogram("interest_store_seconds", {"rpc": "IngestEvents", "platform": "food"},
                                  {"0.01": 0, "0.1": 0, "0.25": 50, "+Inf": 50}),
        "alert_rule_test": [
            alert("InterestStoreSlow", "5m"),
            alert("InterestStoreSlow", "15m", {
                "severity": "warning", "summary": "Profile-store commits p99 is 248.5ms"}),
        ],
    },
    {  # food's events half rejected; kitchen's 5 in 105
        "input_series": [
            series("interest_events_total", {"platform": "food", "outcome": "accepted"}, "0+50x30"),
            series("interest_events_total", {"platform": "food", "outcome": "rejected"}, "0+50x30"),
            series("interest_events_total", {"platform": "kitchen", "outcome": "accepted"}, "0+100x30"),
            series("interest_events_total", {"platform": "kitchen", "outcome": "rejected"}, "0+5x30"),
        ],
        "alert_rule_test": [
            alert("InterestEventsRejected", "10m"),
            alert("InterestEventsRejected", "20m", {
                "severity": "warning", "platform": "food", "summary": "50% of food's events are rejected"}),
        ],
    },
    {  # food refused 300 calls a minute over its share (5/s), kitchen 30 a minute (0.5/s); the
        # operator's gateway-wide refusals are overload, not a platform over its share
        "input_series": [
            series(REFUSED, {"platform": "food", "limit": "platform"}, "0+240x30"),
            series(REFUSED, {"platform": "food", "limit": "rate"}, "0+60x30"),
            series(REFUSED, {"platform": "kitchen", "limit": "platform"}, "0+30x30"),
            series(REFUSED, {"platform": "*", "limit": "gateway"}, "0+600x30"),
        ],
        "alert_rule_test": [
            alert("InterestPlatformOverShare", "8m"),
            alert("InterestPlatformOverShare", "20m", {
                "severity": "warning", "platform": "food",
                "summary": "food is refused 5 calls/s over its share"}),
        ],
    },
    {  # kitchen's items outside its index pass 50,000 at minute 26 and stay; food's catalogue
        # is scored whole (0)
        "input_series": [
            series("interest_catalogue_unindexed_items", {"platform": "kitchen"}, "0+2000x30 60000+0x70"),
            series("interest_catalogue_unindexed_items", {"platform": "food"}, "0+0x100"),
        ],
        "alert_rule_test": [
            alert("InterestCatalogueUnindexed", "60m"),  # over, but not yet for an hour
            alert("InterestCatalogueUnindexed", "90m", {
                "severity": "warning", "platform": "kitchen",
                "summary": "kitchen has 60000 items outside its nearest-neighbour index"}),
        ],
    },
    {  # a keys file reload refused at minute 3; later reloads succeed
        "input_series": [
            series("interest_api_key_reloads_total", {"outcome": "rejected"}, "0 0 0 1+0x13"),
            series("interest_api_key_reloads_total", {"outcome": "loaded"}, "1 1 1 1 2+0x12"),
        ],
        "alert_rule_test": [
            alert("InterestApiKeysReloadFailed", "2m"),
            alert("InterestApiKeysReloadFailed", "5m", {
                "severity": "warning", "summary": "The API keys file could not be reloaded"}),
            alert("InterestApiKeysReloadFailed", "16m"),  # 10 minutes without a new refusal: resolved
        ],
    },
]


def test_rules_are_valid_and_documented() -> None:
    """promtool accepts the file; each alert has a severity, a summary and a description, and
    the README's "Alerts" section names it (what it means, what to look at first)."""
    check = subprocess.run([prometheus_tool("promtool"), "check", "rules", str(ALERTS)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    readme = (ROOT / "README.md").read_text()
    alerts = readme.split("\n## Alerts\n", 1)
    assert len(alerts) == 2, "README.md has no '## Alerts' section"
    section = alerts[1].split("\n## ", 1)[0]
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)) >= 9
    for rule in rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert f"`{rule['alert']}`" in section, f"README's Alerts section does not explain {rule['alert']}"


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    """promtool's rule unit tests over simulated time; every alert is seen both firing and quiet."""
    firing = {c["alertname"] for case in CASES for c in case["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for case in CASES for c in case["alert_rule_test"] if not c["exp_alerts"]}
    names = {r["alert"] for r in rules()}
    assert firing == names and quiet == names, (
        f"untested: never firing {sorted(names - firing)}, never quiet {sorted(names - quiet)}")
    # The summaries are what these cases check; the long descriptions are left out of the copy
    # promtool loads (it compares every annotation), so a reworded description needs no test change.
    stripped = yaml.safe_load(ALERTS.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(stripped, sort_keys=False))
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", **case} for case in CASES]}
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run = subprocess.run([prometheus_tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
