"""The bench report's verdict on 'stack >= 85% of the in-process limit'."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.added_index_load import builds, window
from bench.loadgen import open_loop
from bench.report import _catalogue_scale, _limit_target, _paired_table

STACK = {"throughput_rps": 80.0}
LIMIT = {"requests_per_s": 100.0}


def paired(*fractions: float) -> dict[str, object]:
    rounds = [{"limit_before_rps": 100.0, "stack_rps": 100.0 * f, "stack_p99_ms": 900.0,
               "limit_after_rps": 100.0, "fraction": f} for f in fractions]
    ordered = sorted(fractions)
    return {"concurrency": 64, "rounds": rounds, "median_fraction": ordered[len(ordered) // 2]}


def test_without_paired_rounds_the_unpaired_fraction_decides() -> None:
    target = _limit_target(STACK, LIMIT, None)
    assert target["fraction"] == 0.8
    assert target["met"] is False
    assert "paired_median_fraction" not in target
    assert _limit_target({"throughput_rps": 86.0}, LIMIT, None)["met"] is True


def test_paired_median_decides_and_the_unpaired_figure_is_kept() -> None:
    target = _limit_target(STACK, LIMIT, paired(0.84, 0.88, 0.9))
    assert target["fraction"] == 0.8  # still reported beside the paired figure
    assert target["paired_fractions"] == [0.84, 0.88, 0.9]
    assert target["paired_median_fraction"] == 0.88
    assert target["met"] is True
    missed = _limit_target({"throughput_rps": 99.0}, LIMIT, paired(0.8, 0.84, 0.95))
    assert missed["met"] is False  # a good unpaired run does not overrule the paired median


def test_paired_table_lists_every_round_and_the_median() -> None:
    lines = _paired_table(paired(0.84, 0.88, 0.9))
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1", "2", "3", "median"]
    assert rows[-1].rstrip().endswith("88% |")
    assert _paired_table(None) == [] and _paired_table({"rounds": []}) == []


def test_perf_analyzer_commands_are_recorded_relative_to_the_repository() -> None:
    from pathlib import Path

    from bench.perf_analyzer import repo_relative

    root = Path("/checkout")
    assert repo_relative("/checkout/.bench-tools/bin/perf_analyzer", root) == ".bench-tools/bin/perf_analyzer"
    assert repo_relative("/checkout/var/bench/perf_analyzer/c1.csv", root) == "var/bench/perf_analyzer/c1.csv"
    assert [repo_relative(a, root) for a in ("/elsewhere/x", "127.0.0.1:8001", "-m", "4000")] == [
        "/elsewhere/x", "127.0.0.1:8001", "-m", "4000"]


def test_startup_is_a_target_row_when_measured() -> None:
    from bench.report import _startup_row

    (row,) = _startup_row({"serving_s": 3.18, "met": True})
    assert "to gRPC SERVING < 20 s | 3.18 s | True |" in row
    assert _startup_row(None) == []


def scale_out_run(rps: float, p99: float, cores: dict[str, float], errors: dict[str, int] | None = None
                  ) -> dict[str, object]:
    return {"throughput_rps": rps, "p99_ms": p99, "errors": errors or {},
            "processes": {name: {"cpu_cores": c, "peak_rss_mb": 100.0} for name, c in cores.items()}}


def scale_out_stack(gateways: list[str], others: dict[str, float]) -> dict[str, Any]:
    from bench.scale_out import stack_figures

    def cores(gateway_core: float) -> dict[str, float]:
        return {**{g: gateway_core for g in gateways}, **others, "load_generator": 0.2}

    return stack_figures(gateways, {
        "ingest": scale_out_run(600.0, 40.0, cores(0.5)),
        "recommend": scale_out_run(500.0, 30.0, cores(0.625)),
        "recommend_at_rate": scale_out_run(200.0, 8.0, cores(0.25), {"UNAVAILABLE": 2}),
    })


def test_scale_out_throughput_per_gateway_core_divides_by_the_gateways_summed() -> None:
    two = scale_out_stack(["gateway_a", "gateway_b"], {"triton": 0.1, "postgres": 0.3})
    assert (two["ingest_rps"], two["ingest_p99_ms"]) == (600.0, 40.0)
    assert (two["recommend_rps"], two["recommend_p99_ms"]) == (500.0, 30.0)
    assert two["recommend_p99_ms_at_200rps"] == 8.0
    assert two["gateway_cores"] == {"ingest": 1.0, "recommend": 1.25, "recommend_at_rate": 0.5}
    assert two["ingest_rps_per_gateway_core"] == 600.0  # not 1,200: both gateways' cores count
    assert two["recommend_rps_per_gateway_core"] == 400.0
    assert two["cpu"]["ingest"] == {"gateway_a": 0.5, "gateway_b": 0.5, "triton": 0.1, "postgres": 0.3,
                                    "load_generator": 0.2}
    assert two["errors"] == {"recommend_at_rate": {"UNAVAILABLE": 2}}
    one = scale_out_stack(["gateway"], {"triton": 0.1})
    assert one["ingest_rps_per_gateway_core"] == 1200.0


def test_scale_out_section_tables_both_stacks_and_each_process() -> None:
    from bench.report import _scale_out

    section = {"duration_s": 15.0, "concurrency": 8, "open_rate_rps": 200.0, "notes": "shared cores",
               "one_gateway_sqlite": scale_out_stack(["gateway"], {"triton": 0.1}),
               "two_gateways_postgres": scale_out_stack(["gateway_a", "gateway_b"],
                                                        {"triton": 0.1, "postgres": 0.3})}
    lines = _scale_out(section)
    one = [line for line in lines if line.startswith("| one gateway, SQLite |")]
    two = [line for line in lines if line.startswith("| two gateways, PostgreSQL |")]
    errors = "{'recommend_at_rate': {'UNAVAILABLE': 2}}"
    assert one[0] == ("| one gateway, SQLite | 600.0 | 40.0 | 500.0 | 30.0 | 8.0 | 1200.0 | 800.0 "
                      f"| {errors} |")
    assert two[0].endswith(f"| 600.0 | 400.0 | {errors} |")
    assert "| stack | gateways | triton | postgres | load generator |" in lines
    assert one[1] == ("| one gateway, SQLite | 0.50 / 0.62 / 0.25 | 0.10 / 0.10 / 0.10 |  "  # no postgres
                      "| 0.20 / 0.20 / 0.20 |")
    assert two[1] == ("| two gateways, PostgreSQL | 1.00 / 1.25 / 0.50 | 0.10 / 0.10 / 0.10 "
                      "| 0.30 / 0.30 / 0.30 | 0.20 / 0.20 / 0.20 |")
    assert lines[-2] == "shared cores"
    assert _scale_out(None) == []
    assert _scale_out({"error": "python -m bench.scale_out exited with status 1"})[2] == (
        "not run: python -m bench.scale_out exited with status 1")


def test_the_propagation_row_says_each_direction_and_what_was_never_seen() -> None:
    from bench.report import _propagation_row

    target = {"changes": 10, "added_on_the_other": {"p50_s": 0.31, "max_s": 0.62, "never_seen": 0},
              "removed_on_the_other": {"p50_s": 0.3, "max_s": 0.58, "never_seen": 1},
              "stale_on_own_gateway": 0, "poll_s": 0.5, "target_s": 1.0, "met": False}
    (row,) = _propagation_row(target)
    assert "within 1 s" in row and "p50 0.31 s, max 0.62 s;" in row
    assert "max 0.58 s, 1 never" in row and row.endswith("| False |")
    assert _propagation_row(None) == []
    (failed,) = _propagation_row({"error": "AioRpcError(UNAVAILABLE)"})
    assert "not measured: AioRpcError(UNAVAILABLE) | |" in failed


def test_the_catalogue_section_tables_the_cost_of_added_items_when_measured() -> None:
    section: dict[str, Any] = {"queries": {"migrated": 10, "model_only": 10},
                               "settings": {"ann_ef_search": 1024}, "sizes": [], "rank_cost": []}
    assert not any("Items added" in line for line in _catalogue_scale(section))
    section["added_items_cost"] = [
        {"added": 0, "call_p50_ms": 3.75, "call_p99_ms": 5.04, "search_p50_ms": 3.68},
        {"added": 50_000, "call_p50_ms": 10.37, "call_p99_ms": 11.73, "search_p50_ms": 4.07,
         "added_index_build_s": 12.03, "indexed_call_p50_ms": 4.58, "indexed_call_p99_ms": 7.35,
         "indexed_overlap_at_10": 1.0}]
    lines = _catalogue_scale(section)
    assert "| 0 | 3.75 | 5.04 | 3.68 |  |  |  |  |" in lines  # (below ann_added_index_min: not indexed)
    assert "| 50,000 | 10.37 | 11.73 | 4.07 | 12.03 | 4.58 | 7.35 | 1.0 |" in lines


def test_the_added_index_load_reads_builds_from_the_gateway_log_and_splits_the_calls(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text(
        "x INFO interest.gateway: catalogue kitchen: indexing the 10000 items added or changed since "
        "its index was built, in the background\n"
        "x INFO interest.gateway: catalogue kitchen: indexed the 10000 items added or changed since its "
        "index was built in 1.9 s (0 scored exactly beside the indexes now)\n"
        "x INFO interest.gateway: catalogue kitchen: indexing the 20000 items added or changed since "
        "its index was built, in the background\n")
    assert builds(log, 0) == (2, [(10000, 1.9)])  # the second still building
    calls = [(0.1, 0.010, "OK"), (0.5, 0.030, "OK"), (0.9, 1.0, "RESOURCE_EXHAUSTED"), (2.0, 0.008, "OK")]
    assert window(calls, 0.0, 1.0) == {"calls": 2, "errors": {"RESOURCE_EXHAUSTED": 1},
                                       "p50_ms": 20.0, "p99_ms": 29.8}
    assert window(calls, 5.0, 6.0) == {"calls": 0, "errors": {}}


def test_the_open_loop_keeps_each_call_on_its_timeline() -> None:
    async def call(i: int) -> None:
        if i % 2:
            raise ValueError("odd")

    result = asyncio.run(open_loop(call, rate=100.0, duration_s=0.1))
    assert [round(sent, 2) for sent, _, _ in sorted(result.timeline)] == [i / 100 for i in range(10)]
    assert [status for _, _, status in sorted(result.timeline)] == ["OK", "ValueError"] * 5
    assert result.errors == {"ValueError": 5} and result.ok == 5
    assert all(latency >= 0 for _, latency, _ in result.timeline)


def test_the_added_index_load_section_names_the_build_the_windows_and_the_worst_second(tmp_path: Path
                                                                                       ) -> None:
    from bench.report import _added_index_load, plot_added_index_load

    section = {"catalogue_items": 1_000_000, "added": 50_000, "index_min": 10_000, "texts_per_s": 831.0,
               "rate_rps": 200.0, "duration_s": 5.0,
               "build": {"at_s": 2.4, "items": 50000.0, "build_s": 2.1},
               "during_build": {"calls": 480, "errors": {}, "p50_ms": 8.8, "p99_ms": 83.4},
               "after_build": {"calls": 400, "errors": {"DEADLINE_EXCEEDED": 2}, "p50_ms": 4.3,
                               "p99_ms": 7.5},
               "p99_ms_by_second": [28.2, 96.8, None, 6.1, 5.9]}
    text = "\n".join(_added_index_load(section))
    assert "| while it built (2.1 s by the gateway's log) | 480 | 8.8 | 83.4 | none |" in text
    assert "| from a second after it | 400 | 4.3 | 7.5 | 2 DEADLINE_EXCEEDED |" in text
    assert "Worst second's p99: 96.8 ms, second 1 after the last add" in text
    plot_added_index_load(section, tmp_path / "a.png", "machine")
    assert (tmp_path / "a.png").stat().st_size > 10_000
    assert _added_index_load(None) == []
    assert "not run: exit status 1" in "\n".join(_added_index_load({"error": "exit status 1"}))
