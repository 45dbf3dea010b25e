"""benchmarks/bench_sequences_profile.py: reading Spark's monitoring API and DuckDB's profile, and the table."""
from __future__ import annotations

import pytest

from benchmarks.bench_sequences_profile import PLANS, duckdb_profile, markdown, metric_seconds, spark_profile

TOTAL = "total (min, med, max (stageId: taskId))\n"


@pytest.mark.parametrize("value, seconds", [
    ("1.6 s", 1.6), ("10 ms", 0.01), (TOTAL + "562 ms (231 ms, 331 ms, 331 ms (stage 0.0: task 1))", 0.562),
    (TOTAL + "2.1 m (1.0 m, 1.1 m, 1.1 m (stage 3.0: task 9))", 126.0), ("1,234 ms", 1.234), ("3 h", 10800.0)])
def test_spark_timing_metrics_are_read_as_their_total_in_seconds(value: str, seconds: float) -> None:
    assert metric_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["20,000", "136.0 MiB", TOTAL + "68.0 MiB (68.0 MiB, 68.0 MiB, 68.0 MiB)", "0.0 B"])
def test_counts_and_sizes_are_not_durations(value: str) -> None:
    assert metric_seconds(value) is None


def _stage(stage: int, status: str, run_ms: int) -> dict:
    return {"stageId": stage, "status": status, "numTasks": 2, "executorRunTime": run_ms,
            "executorCpuTime": run_ms * 500_000, "jvmGcTime": 100, "executorDeserializeTime": 30,
            "shuffleWriteTime": 68_000_000, "shuffleFetchWaitTime": 5, "inputBytes": 2**20 * 14,
            "shuffleWriteBytes": 2**20 * 11, "shuffleReadBytes": 0, "outputBytes": 0, "memoryBytesSpilled": 0}


def test_the_spark_profile_keeps_completed_stages_and_timed_operators_in_plan_order() -> None:
    nodes = [{"nodeId": 14, "nodeName": "Sort", "metrics": [
                 {"name": "sort time", "value": TOTAL + "2.9 s (1.4 s, 1.5 s, 1.5 s (stage 3.0: task 7))"},
                 {"name": "peak memory", "value": TOTAL + "136.0 MiB (68.0 MiB, 68.0 MiB, 68.0 MiB)"}]},
             {"nodeId": 11, "nodeName": "Exchange", "metrics": [
                 {"name": "shuffle records written", "value": "20,000"},
                 {"name": "shuffle write time", "value": TOTAL + "77 ms (32 ms, 44 ms, 44 ms)"}]},
             {"nodeId": 5, "nodeName": "Window", "metrics": [{"name": "spill size", "value": "0.0 B"}]}]
    got = spark_profile([_stage(5, "COMPLETE", 3900), _stage(4, "SKIPPED", 0), _stage(3, "COMPLETE", 5700)], nodes)
    assert [s["stage"] for s in got["stages"]] == [3, 5]  # the skipped stage (its output reused) is left out
    first = got["stages"][0]
    assert first["run_s"] == pytest.approx(5.7) and first["cpu_s"] == pytest.approx(2.85)
    assert first["shuffle_write_s"] == pytest.approx(0.068) and first["fetch_wait_s"] == pytest.approx(0.005)
    assert first["input_mb"] == pytest.approx(14.0)
    assert [(o["node"], o["metric"], round(o["seconds"], 3)) for o in got["operators"]] == [
        (14, "sort time", 2.9), (11, "shuffle write time", 0.077)]


def test_the_duckdb_profile_lists_its_timed_operators_from_the_root() -> None:
    tree = {"operator": [{"type": "RESULT_COLLECTOR", "timing": 1e-5, "intermediate_rows": 0, "children": [
        {"type": "COPY_TO_FILE", "timing": 0.19, "intermediate_rows": 1, "children": [
            {"type": "WINDOW", "timing": 0.75, "intermediate_rows": 1_000_000, "children": [
                {"type": "TABLE_SCAN", "timing": 0.05, "intermediate_rows": 1_000_000, "children": []}]}]}]}]}
    assert duckdb_profile(tree) == [{"operator": "COPY_TO_FILE", "seconds": 0.19, "rows": 1},
                                    {"operator": "WINDOW", "seconds": 0.75, "rows": 1_000_000},
                                    {"operator": "TABLE_SCAN", "seconds": 0.05, "rows": 1_000_000}]


def _size(differing: int) -> dict:
    profile = {"stages": [{**spark_profile([_stage(3, "COMPLETE", 6000)], [])["stages"][0]}],
               "operators": [{"node": 14, "operator": "Sort", "metric": "sort time", "seconds": 3.0}]}
    spark = {"window": {"seconds": 6.0, "cold": 14.0, "profile": profile},
             "window_nolimit": {"seconds": 5.0, "cold": 6.0, "rows_differing": 0},
             "collect": {"seconds": 3.0, "cold": 6.0, "rows_differing": 0},
             "bounded": {"seconds": 4.0, "cold": 7.0, "rows_differing": differing, "profile": profile},
             "peak_rss_mb": 1700.0}
    duck = {"seconds": 0.5, "cold": 0.6, "peak_rss_mb": 180.0, "rows": 10,
            "operators": [{"operator": "WINDOW", "seconds": 0.75, "rows": 1_000_000}]}
    return {"spark": spark, "duckdb": duck}


def test_the_table_gives_each_plan_against_duckdb_and_flags_a_plan_that_differs() -> None:
    context = {"command": "python -m benchmarks.bench_sequences_profile", "machine": "2 cores", "date": "2026-12-07",
               "commit": "abc1234", "runs": 2, "seconds": 90.0, "collect_max": 5000}
    text = markdown({1_000_000: _size(0)}, context)
    assert f"| 1,000,000 | Spark: {PLANS['window']} | 14.0 | 6.0 | 12.00x | – | 1700 |" in text
    assert f"| 1,000,000 | Spark: {PLANS['collect']} | 6.0 | 3.0 | 6.00x | 0 | 1700 |" in text
    assert f"| 1,000,000 | Spark: {PLANS['bounded']} | 7.0 | 4.0 | 8.00x | 0 | 1700 |" in text
    assert "| 1,000,000 | DuckDB (row_number, the same query) | 0.6 | 0.5 | 1.00x | – | 180 |" in text
    assert text.count("| 14 | Sort | sort time | 3.0 | 50% |") == 2  # of the 6.0 task-seconds; both profiled plans
    assert "collects users with at most 5,000 behaviours" in text
    assert "The platform's plan (the window) takes 6.0 s, 12.0x DuckDB's 0.5 s (does not meet the <= 3x goal). The " \
        "bounded collect takes 4.0 s (8.0x; 1.50x as fast as the window), the pure collect 3.0 s (6.0x)." in text
    assert "differs from the window's selection" not in text
    flagged = markdown({1_000_000: _size(7)}, context)
    assert f"**{PLANS['bounded']} differs from the window's selection in 7 rows.**" in flagged


def test_plans_run_cold_first_then_in_rounds_each_starting_one_plan_later() -> None:
    """bench_sequences_profile.interleaved: no plan's warm run comes before every plan's cold run, and no plan
    always runs first; per plan the fastest warm run is kept."""
    from benchmarks.bench_sequences_profile import interleaved

    calls: list[str] = []
    seconds = iter([9, 8, 7, 3, 2, 1, 4, 6, 5, 6, 5, 4])

    def once(name: str) -> dict:
        calls.append(name)
        return {"seconds": float(next(seconds)), "n": len(calls)}

    got = interleaved(["a", "b", "c"], 3, once)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert got["a"] == {"seconds": 3.0, "n": 4, "cold": 9.0, "warm_runs": [3.0, 5.0, 5.0]}
    assert got["b"]["seconds"] == 2.0 and got["b"]["warm_runs"] == [2.0, 4.0, 4.0]
    assert got["c"]["seconds"] == 1.0 and got["c"]["cold"] == 7.0


def test_a_saved_run_is_rendered_again_without_measuring(tmp_path) -> None:
    """--render writes the markdown of a saved JSON with the current wording, its measurement command kept."""
    import json

    from benchmarks.bench_sequences_profile import main

    context = {"command": "python -m benchmarks.bench_sequences_profile --sizes 1000000", "machine": "2 cores",
               "date": "2026-12-07", "commit": "abc1234", "runs": 3, "seconds": 90.0, "collect_max": 5000}
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"context": context, "sizes": {"1000000": _size(0)}}))
    main(["--render", str(saved), "--out-dir", str(tmp_path), "--name", "again"])
    text = (tmp_path / "again.md").read_text()
    assert text.startswith("<!-- generated by: python -m benchmarks.bench_sequences_profile --sizes 1000000 "
                           "(rendered again by python -m benchmarks.bench_sequences_profile --render ")
    assert "Command: `python -m benchmarks.bench_sequences_profile --sizes 1000000`" in text
    assert f"| 1,000,000 | Spark: {PLANS['bounded']} | 7.0 | 4.0 | 8.00x | 0 | 1700 |" in text
