"""Jobs SIGKILLed at their steps (``core/faults.py``): files staged, files moved into the table but not
committed, committed; a model trained, a model registered. Each kill runs the real job in its own
process (its own Spark) on a copy of the tiny world's lake, then the tables are checked."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import tables as t
from core.delta import get_tables
from core.faults import ENV
from jobs import build_sequences, build_training_set, feature_stats, maintenance
from jobs import publish_user_representations as publish
from tests.conftest import ROOT, SMALL, TINY_END, TINY_START, TINY_WORLD, TRAIN_DAYS, make_config
from tests.helpers import job_argv, run

KILLED = -9  # subprocess return code of a SIGKILLed process


def _killed_run(module: str, tmp: Path, args: list[str], fault: str, overrides: tuple[str, ...]) -> int:
    env = {**os.environ, ENV: fault, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, "-m", module, *job_argv(tmp, *overrides), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == KILLED:  # killed where it was told, not elsewhere
        assert f") at {fault}" in proc.stderr, proc.stderr[-2000:]
    return proc.returncode


def _representations(tables, day: str) -> dict[int, tuple]:  # noqa: ANN001
    return {r.user_id: (r.ppp_tier, np.asarray(r.embedding)) for r in tables.read(t.USER_REPRESENTATIONS, dt=day)
            .select("user_id", "ppp_tier", "embedding").collect()}


def _same(a: dict[int, tuple], b: dict[int, tuple]) -> bool:
    return a.keys() == b.keys() and all(a[u][0] == b[u][0] and np.allclose(a[u][1], b[u][1], atol=1e-6) for u in a)


@pytest.fixture()
def lake_copy(spark, tiny_published, tmp_path: Path):  # noqa: ANN001, ANN201
    """A copy of the published tiny lake; MLflow (read only here) stays the fixture's."""
    cfg, _, mlflow_tmp = tiny_published
    shutil.copytree(cfg.lake_root, tmp_path / "lake")
    overrides = (*TINY_WORLD, *SMALL, f"lake_root={tmp_path / 'lake'}")
    return get_tables(spark, make_config(tmp_path, *overrides)), mlflow_tmp, overrides, tmp_path


@pytest.mark.reliability(
    "faults", "the nightly job SIGKILLed after staging its files, and between moving them into the partition "
    "folder and the commit",
    "the published table stays at its version with the same rows, readable; a re-run completes and writes the "
    "partition an undisturbed run writes; jobs/maintenance.py clean removes the leftovers")
def test_nightly_job_killed_before_its_commit(lake_copy, capsys) -> None:
    tables, mlflow_tmp, overrides, _ = lake_copy
    before, rows = tables.version(t.USER_REPRESENTATIONS), _representations(tables, TINY_END)
    for fault in ("write.staged", "write.moved"):
        assert _killed_run("jobs.publish_user_representations", mlflow_tmp, ["--date", TINY_END], fault,
                           overrides) == KILLED
        assert tables.version(t.USER_REPRESENTATIONS) == before
        assert _same(_representations(tables, TINY_END), rows)
    assert run(publish, mlflow_tmp, "--date", TINY_END, overrides=overrides) == 0
    assert tables.version(t.USER_REPRESENTATIONS) == before + 1
    assert _same(_representations(tables, TINY_END), rows)  # what the undisturbed run wrote
    capsys.readouterr()
    assert run(maintenance, mlflow_tmp, "clean", "--table", t.USER_REPRESENTATIONS.name, "--min-age-hours", "0",
               overrides=overrides) == 0
    out = capsys.readouterr().out
    assert "outputs/user_representations: removed 2 staging folder(s) and " in out   # one per killed run
    assert "uncommitted file(s)" in out and " and 0 uncommitted" not in out          # the moved files
    assert _same(_representations(tables, TINY_END), rows)


@pytest.mark.reliability(
    "faults", "the nightly job SIGKILLed right after its commit",
    "the new version is complete (the commit is atomic); the table is readable")
def test_nightly_job_killed_after_its_commit(lake_copy) -> None:
    tables, mlflow_tmp, overrides, _ = lake_copy
    before, rows = tables.version(t.USER_REPRESENTATIONS), _representations(tables, TINY_END)
    assert _killed_run("jobs.publish_user_representations", mlflow_tmp, ["--date", TINY_END], "write.committed",
                       overrides) == KILLED
    assert tables.version(t.USER_REPRESENTATIONS) == before + 1
    assert _same(_representations(tables, TINY_END), rows)


FEATURE_JOBS = {
    "build_sequences": (build_sequences, ["--date", TINY_END], t.USER_SEQUENCES, [TINY_END]),
    "build_training_set": (build_training_set, ["--start", TINY_START, "--end", TINY_END], t.TRAINING_EXAMPLES,
                           ["2026-11-04", "2026-11-05", "2026-11-06", "2026-11-07", TINY_END]),
    "feature_stats": (feature_stats, ["--date", TINY_END, "--training-start", TINY_START, "--training-end", TINY_END],
                      t.FEATURE_STATS, [TINY_END]),
}


@pytest.mark.reliability(
    "faults", "each feature job (sequences, training set, statistics) SIGKILLed between moving its files into the "
    "partition folders and the commit",
    "its table stays at its version, readable; a re-run writes the same rows as an undisturbed run")
@pytest.mark.parametrize("job", sorted(FEATURE_JOBS))
def test_feature_job_killed_before_its_commit(lake_copy, job: str) -> None:
    module, args, spec, days = FEATURE_JOBS[job]
    tables, mlflow_tmp, overrides, _ = lake_copy
    overrides = (*overrides, "stats.drift_threshold=100")
    before = tables.version(spec)
    rows = sorted(repr(r) for r in tables.read(spec, dt=days).collect())
    assert _killed_run(f"jobs.{job}", mlflow_tmp, args, "write.moved", overrides) == KILLED
    assert tables.version(spec) == before
    assert sorted(repr(r) for r in tables.read(spec, dt=days).collect()) == rows
    assert run(module, mlflow_tmp, *args, overrides=overrides) == 0
    assert tables.version(spec) == before + 1
    assert sorted(repr(r) for r in tables.read(spec, dt=days).collect()) == rows


@pytest.mark.reliability(
    "faults", "the training job SIGKILLed after training (before registering), and after registering (before "
    "the promotion gate)",
    "no model version, or a registered version that carries no alias: the champion never moves without the "
    "gate")
def test_training_job_killed_before_the_gate(tiny_pipeline, tmp_path: Path) -> None:
    from registry.models import ModelRegistry

    cfg, _, lake_tmp = tiny_pipeline
    overrides = (*TINY_WORLD, *SMALL, f"lake_root={lake_tmp / 'lake'}")
    args = ["--mode", "full", *TRAIN_DAYS]
    reg = ModelRegistry(make_config(tmp_path, *overrides).mlflow)
    assert _killed_run("jobs.train", tmp_path, args, "train.trained", overrides) == KILLED
    assert reg.champion_version() is None and reg.versions_summary() == "it has no version"
    assert _killed_run("jobs.train", tmp_path, args, "train.registered", overrides) == KILLED
    assert reg.versions_summary() == "its versions: 1" and reg.champion_version() is None
