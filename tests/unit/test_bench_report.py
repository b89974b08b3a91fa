"""The bench report's verdict on 'stack >= 85% of the in-process limit'."""

from __future__ import annotations

from bench.report import _limit_target, _paired_table

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
