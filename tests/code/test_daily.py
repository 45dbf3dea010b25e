"""jobs/daily.py on the tiny world: two consecutive days, a failure injected in the middle step and
the re-run that resumes after the finished steps, a backfill of three days (in order, stopping at a
missing upstream partition unless told to continue), the run log ``ops/daily_runs``; then the
``daily`` config section and the scheduler example (the Airflow DAG, parsed with ``ast`` always and
by Airflow where it is installed).

The job tests have their own lake (the tiny world's ``raw/`` tables only) and MLflow store: a SMALL
champion trained on 2026-11-02..03 of a training set of 2026-11-02..05, then the daily runs of
2026-11-06, 07 and 08 (each builds its range D-2..D, trains on D-1, gates on D, publishes D).
Real Spark, Delta, Petastorm, MLflow (SQLite).
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest

from core import tables as t
from core.config import load_config
from core.errors import ConfigError
from jobs import build_sequences, build_training_set, daily, feature_stats, train
from registry.models import ModelRegistry
from tests.conftest import LOCAL_CONF, ROOT, SMALL, TINY_WORLD, make_config
from tests.helpers import run

OV = (*TINY_WORLD, *SMALL, "training.max_steps_per_epoch=4", "training.promotion.resamples=40",
      "stats.drift_threshold=100")
D1, D2, D3 = "2026-11-06", "2026-11-07", "2026-11-08"
STEPS = ("sequences", "training_set", "feature_stats", "train", "publish")
DAG = ROOT / "examples" / "airflow" / "daily_dag.py"


def daily_run(tmp: Path, *args: str, overrides: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """jobs/daily.py in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(daily, tmp, *args, overrides=(*OV, *overrides))
    return code, out.getvalue(), err.getvalue()


def log_rows(tables: Any, run_id: str | None = None) -> list[dict[str, Any]]:
    rows = [r.asDict() for r in tables.read(t.DAILY_RUNS).collect()]
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


def last_run(tables: Any) -> list[dict[str, Any]]:
    """The rows of the newest run of the run log."""
    newest = tables.last_metadata(t.DAILY_RUNS)["run_id"]
    return log_rows(tables, newest)


def status(rows: list[dict[str, Any]], day: str) -> dict[str, str]:
    return {r["step"]: r["status"] for r in rows if r["dt"] == day}


def versions(tables: Any) -> dict[str, int]:
    specs = (t.USER_SEQUENCES, t.TRAINING_EXAMPLES, t.FEATURE_STATS, t.USER_REPRESENTATIONS)
    return {s.name: tables.version(s) for s in specs}


def model_versions(cfg: Any) -> list[int]:
    return sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(
        f"name='{cfg.mlflow.registered_model}'"))


@pytest.fixture(scope="module")
def env(tiny_world, tmp_path_factory):  # noqa: ANN001, ANN201
    """Own lake (a copy of the tiny world's raw tables) and MLflow store with a SMALL champion."""
    src_cfg, _ = tiny_world
    tmp = tmp_path_factory.mktemp("daily")
    shutil.copytree(Path(src_cfg.lake_root) / "raw", tmp / "lake" / "raw")
    assert run(build_training_set, tmp, "--start", "2026-11-02", "--end", "2026-11-05", overrides=OV) == 0
    assert run(build_sequences, tmp, "--date", "2026-11-05", overrides=OV) == 0
    assert run(feature_stats, tmp, "--date", "2026-11-05", overrides=OV) == 0
    assert run(train, tmp, "--mode", "full", "--start", "2026-11-02", "--end", "2026-11-03", overrides=OV) == 0
    from core.delta import get_tables
    from core.spark import get_spark

    cfg = make_config(tmp, *OV)
    return cfg, get_tables(get_spark(cfg), cfg), tmp


@pytest.fixture(scope="module")
def two_days(env):  # noqa: ANN001, ANN201
    """The daily runs of D1 and then D2, each its own command; with their outputs."""
    cfg, tables, tmp = env
    early = tables.files(t.TRAINING_EXAMPLES, ["2026-11-02", "2026-11-03"])
    outs = []
    for day in (D1, D2):
        code, out, err = daily_run(tmp, "--date", day)
        assert code == 0, err
        outs.append((out, last_run(tables)))
    return cfg, tables, tmp, early, outs


def test_two_consecutive_days_run_every_step_and_publish_the_champion_after_the_gate(two_days) -> None:
    cfg, tables, _, early, outs = two_days
    for (out, rows), day in zip(outs, (D1, D2)):
        assert status(rows, day) == {s: "ran" for s in STEPS}
        assert f"daily {day}:" in out and "run log ops/daily_runs v" in out
        for step in STEPS:
            assert any(ln.strip().startswith(step) and " ran " in ln for ln in out.splitlines()), (step, out)
    for spec in (t.USER_SEQUENCES, t.FEATURE_STATS, t.USER_REPRESENTATIONS):
        assert {D1, D2} <= set(tables.partitions(spec)), spec.name
    # the examples of the new day are added; earlier days' examples stay as they were
    assert {"2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05", D1, D2} <= set(
        tables.partitions(t.TRAINING_EXAMPLES))
    assert tables.files(t.TRAINING_EXAMPLES, ["2026-11-02", "2026-11-03"]) == early
    build = tables.last_metadata(t.TRAINING_EXAMPLES)
    assert (build["start"], build["end"]) == ("2026-11-05", D2)
    assert build["splits"] == {"train": ["2026-11-05"], "valid": [D1], "test": [D2]}
    # the day of D2 trained on D1 from the champion and was gated on D2; publishing used the gate's champion
    rows = outs[1][1]
    trained = next(r for r in rows if r["step"] == "train")
    details = json.loads(trained["details"])
    mv = mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model, details["registered"])
    tags = mlflow.get_run(mv.run_id).data.tags
    assert (tags["mode"], tags["train_days"], tags["test_days"]) == ("incremental", f"{D1}..{D1}", D2)
    assert details["champion_after"] == ModelRegistry(cfg.mlflow).champion_version()
    published = {r["model_version"] for r in tables.read(t.USER_REPRESENTATIONS, dt=D2)
                 .select("model_version").distinct().collect()}
    assert published == {details["champion_after"]}
    assert model_versions(cfg) == [1, 2, 3]  # the full run, then one candidate per day


def test_the_run_log_holds_one_row_per_step_with_its_output_and_inputs(two_days) -> None:
    _, tables, _, _, outs = two_days
    rows = outs[0][1]
    assert len({r["run_id"] for r in rows}) == 1 and len(rows) == len(STEPS)
    by_step = {r["step"]: r for r in rows}
    for step, spec in (("sequences", t.USER_SEQUENCES), ("training_set", t.TRAINING_EXAMPLES),
                       ("feature_stats", t.FEATURE_STATS), ("publish", t.USER_REPRESENTATIONS)):
        r = by_step[step]
        assert r["output_table"] == spec.name and r["output"] == f"{spec.name} v{r['output_version']}"
        assert json.loads(r["details"])["inputs"]["config"]
        # the version the step wrote holds the day's partition
        assert D1 in tables.partitions(spec, r["output_version"])
    for r in rows:
        assert r["dt"] == D1 and r["seconds"] > 0 and r["started_at"] is not None and r["message"] == ""
        assert len(r["fingerprint"]) == 16
    assert len({r["fingerprint"] for r in rows}) == len(STEPS)
    assert by_step["sequences"]["command"].startswith("python -m jobs.build_sequences --config ")
    assert by_step["sequences"]["command"].endswith(f"--date {D1}")
    assert by_step["training_set"]["command"].endswith(f"--start 2026-11-04 --end {D1}")
    assert "--training-start 2026-11-04 --training-end 2026-11-04" in by_step["feature_stats"]["command"]
    assert f"--mode incremental --date 2026-11-05 --test-days {D1}" in by_step["train"]["command"]
    inputs = json.loads(by_step["sequences"]["details"])["inputs"]
    assert set(inputs["files"]) == {"raw/events"} and set(inputs["versions"]) == {"raw/items", "raw/users"}
    assert inputs["config"]["sequences"]["lookback_days"] == 30
    # rows are started in step order, and the commit metadata of the run log records the fingerprints
    assert [r["step"] for r in sorted(rows, key=lambda r: r["started_at"])] == list(STEPS)
    meta = [c.metadata for c in tables.history(t.DAILY_RUNS) if c.metadata.get("dt") == D1]
    recorded = {step: m["steps"][step]["fingerprint"] for m in meta for step in m["steps"]}
    assert recorded == {s: by_step[s]["fingerprint"] for s in STEPS}


@pytest.fixture(scope="module")
def resumed(two_days):  # noqa: ANN001, ANN201
    """D3 with a failure injected in the middle step (feature_stats), then the re-run, then a third run."""
    cfg, tables, tmp, _, _ = two_days

    def broken(*_: Any) -> str:
        raise RuntimeError("injected failure in the statistics")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(feature_stats, "_stats", broken)
        failed = daily_run(tmp, "--date", D3)
    failed_rows = last_run(tables)
    before = (versions(tables), model_versions(cfg))
    again = daily_run(tmp, "--date", D3)
    again_rows = last_run(tables)
    after = (versions(tables), model_versions(cfg))
    third = daily_run(tmp, "--date", D3)
    third_rows = last_run(tables)
    return cfg, tables, tmp, (failed, failed_rows, before), (again, again_rows, after), (third, third_rows)


def test_a_failed_step_stops_the_day_with_one_line_and_the_command_that_reruns_it(resumed) -> None:
    _, _, tmp, (failed, rows, _), _, _ = resumed
    code, out, err = failed
    assert code == 1
    assert status(rows, D3) == {"sequences": "ran", "training_set": "ran", "feature_stats": "failed",
                                "train": "not run", "publish": "not run"}
    lines = [ln for ln in err.splitlines() if ln.startswith("daily failed:")]
    assert len(lines) == 1
    assert lines[0].startswith(f"daily failed: {D3} step feature_stats: RuntimeError: injected failure")
    assert lines[0].endswith(f"--date {D3}") and "re-run: python -m jobs.daily --config " in lines[0]
    assert f"--set lake_root={tmp / 'lake'}" in lines[0]
    # the summary is printed on failure too
    assert f"daily {D3}:" in out and "after the failure of feature_stats" in out
    bad = next(r for r in rows if r["step"] == "feature_stats")
    assert "injected failure" in bad["message"] and bad["command"].startswith("python -m jobs.feature_stats ")


def test_the_rerun_skips_the_finished_steps_and_completes(resumed) -> None:
    cfg, tables, _, (_, failed_rows, before), (again, rows, after), (third, third_rows) = resumed
    code, out, err = again
    assert code == 0, err
    assert status(rows, D3) == {"sequences": "skipped", "training_set": "skipped", "feature_stats": "ran",
                                "train": "ran", "publish": "ran"}
    first = {r["step"]: r for r in failed_rows}
    for r in rows:
        if r["status"] == "skipped":  # same output, same fingerprint, naming the run that did the work
            assert r["output_version"] == first[r["step"]]["output_version"]
            assert r["fingerprint"] == first[r["step"]]["fingerprint"]
            assert r["message"] == f"same inputs as run {first[r['step']]['run_id']}"
    (v0, m0), (v1, m1) = before, after
    assert v1[t.USER_SEQUENCES.name] == v0[t.USER_SEQUENCES.name]
    assert v1[t.TRAINING_EXAMPLES.name] == v0[t.TRAINING_EXAMPLES.name]
    assert v1[t.FEATURE_STATS.name] > v0[t.FEATURE_STATS.name] and len(m1) == len(m0) + 1
    assert D3 in tables.partitions(t.USER_REPRESENTATIONS)
    # a third run repeats nothing: every step skipped, no table or model version added
    code, _, err = third[0], third[1], third[2]
    assert code == 0, err
    assert status(third_rows, D3) == {s: "skipped" for s in STEPS}
    assert versions(tables) == v1 and model_versions(cfg) == m1


def test_backfill_runs_the_days_in_order_and_stops_at_a_missing_upstream_partition(resumed) -> None:
    cfg, tables, tmp, *_ = resumed
    models = model_versions(cfg)
    # a changed publishing setting: every day publishes again, in order; everything else is finished work
    code, out, err = daily_run(tmp, "--start", D1, "--end", D3, overrides=("publish.batch_size=512",))
    assert code == 0, err
    rows = last_run(tables)
    for day in (D1, D2, D3):
        assert status(rows, day) == {"sequences": "skipped", "training_set": "skipped", "feature_stats": "skipped",
                                     "train": "skipped", "publish": "ran"}
    published = [c.metadata["dt"] for c in reversed(tables.history(t.USER_REPRESENTATIONS, limit=3))]
    assert published == [D1, D2, D3]
    assert out.index(f"daily {D1}:") < out.index(f"daily {D2}:") < out.index(f"daily {D3}:")
    assert model_versions(cfg) == models
    # a day without its raw/events partition stops the backfill, naming the table and the date
    code, out, err = daily_run(tmp, "--start", D3, "--end", "2026-11-10")
    assert code == 1
    line = next(ln for ln in err.splitlines() if ln.startswith("daily failed:"))
    assert "2026-11-09 step sequences: raw/events has no partition dt=2026-11-09" in line
    assert line.endswith("--start 2026-11-09 --end 2026-11-10")
    assert "not started after the failure: 2026-11-10" in out
    assert status(last_run(tables), "2026-11-09")["sequences"] == "failed"
    # unless told to continue: both missing days are tried and named
    code, out, err = daily_run(tmp, "--start", "2026-11-09", "--end", "2026-11-10", "--continue-on-failure")
    assert code == 1
    line = next(ln for ln in err.splitlines() if ln.startswith("daily failed:"))
    assert "2026-11-09 step sequences" in line and "2026-11-10 step sequences" in line


def test_a_publish_only_day_runs_the_configured_steps(resumed) -> None:
    _, tables, tmp, *_ = resumed
    code, out, err = daily_run(tmp, "--date", D3, overrides=("daily.steps=[sequences,feature_stats,publish]",))
    assert code == 0, err
    rows = last_run(tables)
    assert status(rows, D3) == {"sequences": "skipped", "training_set": "not run", "feature_stats": "skipped",
                                "train": "not run", "publish": "skipped"}
    assert "not in daily.steps" in out


def test_an_old_day_is_not_retrained_after_a_later_days_build(resumed) -> None:
    cfg, tables, tmp, *_ = resumed
    models = model_versions(cfg)
    code, out, err = daily_run(tmp, "--date", D1, overrides=("training.incremental_epochs=2",))
    assert code == 1
    line = next(ln for ln in err.splitlines() if ln.startswith("daily failed:"))
    assert line.startswith(f"daily failed: {D1} step train: features/training_examples holds a build ending {D3}, "
                           f"after {D1}")
    assert status(last_run(tables), D1) == {"sequences": "skipped", "training_set": "skipped",
                                            "feature_stats": "skipped", "train": "failed", "publish": "not run"}
    assert model_versions(cfg) == models


def test_argument_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert run(daily, tmp_path, overrides=OV) == 1
    assert capsys.readouterr().err.strip().endswith("daily failed: give --date D, or --start D1 --end D2 "
                                                    "for a backfill")


def test_the_daily_section_is_closed_and_ordered() -> None:
    cfg = load_config(LOCAL_CONF)
    assert list(cfg.daily.steps) == list(STEPS) and cfg.daily.training_days == 1
    assert load_config(LOCAL_CONF, ["daily.steps=[sequences,publish]"]).daily.steps == ["sequences", "publish"]
    with pytest.raises(ConfigError, match="unknown key 'daily.train'"):
        load_config(LOCAL_CONF, ["daily.train=false"])
    with pytest.raises(ConfigError, match="daily.steps"):
        load_config(LOCAL_CONF, ["daily.steps=[publish,sequences]"])
    with pytest.raises(ConfigError, match="daily.steps"):
        load_config(LOCAL_CONF, ["daily.steps=[sequences,transfer]"])
    with pytest.raises(ConfigError, match="daily.training_days"):
        load_config(LOCAL_CONF, ["daily.training_days=0"])


# ---------------------------------------------------------------- the scheduler example
def _keywords(tree: ast.AST, func: str) -> dict[str, ast.expr]:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and (getattr(n.func, "id", None) == func or getattr(n.func, "attr", None) == func)]
    assert len(calls) == 1, f"expected one call of {func} in {DAG}"
    return {k.arg: k.value for k in calls[0].keywords if k.arg}


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_the_dag_file_submits_the_daily_job_with_retries_and_catch_up() -> None:
    """Always runs (no Airflow needed): the DAG's structure, read with ``ast``."""
    tree = ast.parse(DAG.read_text(), filename=str(DAG))
    dag = _keywords(tree, "DAG")
    assert isinstance(dag["catchup"], ast.Constant) and dag["catchup"].value is True
    assert isinstance(dag["max_active_runs"], ast.Constant) and dag["max_active_runs"].value == 1
    task = _keywords(tree, "SparkSubmitOperator")
    assert any(s.endswith("jobs/daily.py") for s in _strings(task["application"]))
    assert any(s.endswith("dist/platform.zip") for s in _strings(task["py_files"]))
    args = _strings(task["application_args"])
    assert "--config" in args and "--date" in args and "{{ ds }}" in args
    defaults = dag["default_args"]
    assert isinstance(defaults, ast.Dict)
    retries = {k.value: v for k, v in zip(defaults.keys, defaults.values) if isinstance(k, ast.Constant)}
    assert isinstance(retries["retries"], ast.Constant) and retries["retries"].value >= 1
    assert isinstance(retries["depends_on_past"], ast.Constant) and retries["depends_on_past"].value is True
    cron = (ROOT / "examples" / "crontab.txt").read_text()
    assert "jobs/daily.py" in cron and "--date" in cron and "platform.zip" in cron


def test_airflow_loads_the_dag() -> None:
    """Optional: needs Airflow with the Spark provider (not part of requirements.lock)."""
    pytest.importorskip("airflow", reason="Airflow is not installed here (optional: pip install apache-airflow "
                                          "apache-airflow-providers-apache-spark); the ast test checks the DAG")
    pytest.importorskip("airflow.providers.apache.spark", reason="the Airflow Spark provider is not installed")
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAG.parent), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("user_representations_daily")
    assert dag is not None and dag.catchup is True and len(dag.tasks) == 1
    task = dag.tasks[0]
    application = getattr(task, "application", None) or getattr(task, "_application", "")
    assert task.retries >= 1 and str(application).endswith("jobs/daily.py")


class _Builds:
    """A stand-in for the lake's training-set history (no Spark): newest commit first."""

    def __init__(self, *builds: dict[str, Any]):
        from core.delta import Commit

        self.commits = [Commit(v, None, "WRITE", m) for v, m in reversed(list(enumerate(builds)))]  # type: ignore

    def exists(self, spec: Any) -> bool:
        return True

    def history(self, spec: Any, limit: int | None = None) -> list[Any]:
        return self.commits


def test_the_train_step_trains_on_the_day_before_the_test_day_of_the_newest_build_up_to_d() -> None:
    """make demo's layout (one range build 11-05..14) and the rolling daily builds: the candidate never
    trains on the day the gate scores."""
    from core import daily as core_daily

    cfg = load_config(LOCAL_CONF)
    demo = {"job": "build_training_set", "start": "2026-11-05", "end": "2026-11-14",
            "splits": {"train": [f"2026-11-{d:02d}" for d in range(5, 13)], "valid": ["2026-11-13"],
                       "test": ["2026-11-14"]}}
    day = core_daily.Day(_Builds(demo), cfg, {}, [], "r", lambda: None)  # type: ignore[arg-type]
    argv, inputs = day._plan("2026-11-14", "train")
    assert argv == ["--mode", "incremental", "--date", "2026-11-13", "--test-days", "2026-11-14",
                    "--valid-days", "2026-11-13"]
    assert inputs["training_build"] == {"version": 0, "train_day": "2026-11-13", "test_days": ["2026-11-14"]}
    assert "model" not in inputs["config"]["training"]  # the champion fixes the model
    # a later build (ending after D) is not the one D trains and gates with
    later = {**demo, "start": "2026-11-13", "end": "2026-11-15",
             "splits": {"train": ["2026-11-13"], "valid": ["2026-11-14"], "test": ["2026-11-15"]}}
    day = core_daily.Day(_Builds(demo, later), cfg, {}, [], "r", lambda: None)  # type: ignore[arg-type]
    assert day._plan("2026-11-14", "train")[0][3] == "2026-11-13"
    assert day._plan("2026-11-15", "train")[0][3:6] == ["2026-11-14", "--test-days", "2026-11-15"]
    assert core_daily.training_range("2026-11-15", cfg) == ["2026-11-13", "2026-11-14", "2026-11-15"]


class _Lake:
    """A stand-in lake (no Spark) without earlier builds: training examples v3, hybrid examples v5."""

    def exists(self, spec: Any) -> bool:
        return spec.name in (t.TRAINING_EXAMPLES.name, t.HYBRID_EXAMPLES.name)

    def history(self, spec: Any, limit: int | None = None) -> list[Any]:
        return []

    def files(self, spec: Any, days: list[str], version: int | None = None) -> list[str]:
        return []

    def version(self, spec: Any) -> int:
        return {t.TRAINING_EXAMPLES.name: 3, t.HYBRID_EXAMPLES.name: 5}[spec.name]


def test_with_training_hybrid_the_training_set_step_also_builds_the_hybrid_examples() -> None:
    """The step runs build_training_set, then build_hybrid_examples over the same range; its fingerprint
    covers the switch, so turning it on builds again; without it the hybrid job is not called."""
    import argparse

    from core import daily as core_daily
    from core.cli import JobContext

    calls: list[tuple[str, list[str]]] = []

    def job(name: str) -> core_daily.StepJob:
        def parser() -> argparse.ArgumentParser:
            p = argparse.ArgumentParser()
            p.add_argument("--start")
            p.add_argument("--end")
            return p

        def run(ctx: JobContext) -> str:
            calls.append((name, ["--start", ctx.args.start, "--end", ctx.args.end]))
            return f"{name} done"
        return core_daily.StepJob(name, parser, run)

    jobs = {"training_set": job("build_training_set"), core_daily.HYBRID_JOB: job("build_hybrid_examples")}
    plans = {}
    for hybrid in (False, True):
        cfg = load_config(LOCAL_CONF, [f"training.hybrid={str(hybrid).lower()}"])
        day = core_daily.Day(_Lake(), cfg, jobs, [], "r", lambda: None)  # type: ignore[arg-type]
        calls.clear()
        res = day._step("2026-11-14", "training_set", [])
        assert res.status == core_daily.RAN, res.message
        plans[hybrid] = res.fingerprint
        argv = ["--start", "2026-11-12", "--end", "2026-11-14"]
        if hybrid:
            assert calls == [("build_training_set", argv), ("build_hybrid_examples", argv)]
            assert res.output == f"{t.TRAINING_EXAMPLES.name} v3, {t.HYBRID_EXAMPLES.name} v5"
            assert res.details["hybrid_examples_version"] == 5
            assert "build_hybrid_examples done" in res.summary
        else:
            assert calls == [("build_training_set", argv)] and res.output == f"{t.TRAINING_EXAMPLES.name} v3"
    assert plans[False] != plans[True]
