"""The nightly job's guarantees (idempotent partition, refusal of bad output, clear errors) and jobs/query."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import tables as t
from jobs import publish_user_representations as publish
from jobs import query
from tests.conftest import SMALL, TINY_END, TINY_WORLD
from tests.helpers import run

OV = (*TINY_WORLD, *SMALL)


@pytest.mark.reliability(
    "idempotency",
    "the nightly job re-run for the same date",
    "the partition is replaced with the same rows; other dates untouched")
@pytest.mark.parametrize("from_files", [True, False])
def test_rerun_replaces_the_partition(tiny_published, from_files: bool, caplog) -> None:
    """Either scoring path (executors reading and writing the files with pyarrow, or Spark's mapInArrow)
    replaces the partition with the same users and vectors; the files path reports its progress."""
    import logging

    caplog.set_level(logging.INFO, logger="training.progress")
    cfg, tables, tmp = tiny_published
    before = tables.version(t.USER_REPRESENTATIONS)
    cols = ["user_id", "embedding", "ppp_tier", "model_version"]
    old = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).select(*cols).toPandas().set_index("user_id")  # tiny
    other = tables.read(t.USER_REPRESENTATIONS, dt="2026-11-07").count()
    assert run(publish, tmp, "--date", TINY_END, overrides=(*OV, f"publish.from_files={from_files}"),
               lake=cfg.lake_root) == 0
    assert tables.version(t.USER_REPRESENTATIONS) == before + 1
    new = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).select(*cols).toPandas().set_index("user_id")
    assert sorted(new.index) == sorted(old.index) and new.index.is_unique
    new = new.loc[old.index]
    np.testing.assert_allclose(np.stack(new["embedding"]), np.stack(old["embedding"]), rtol=1e-4, atol=1e-5)
    assert list(new["ppp_tier"]) == list(old["ppp_tier"]) and list(new["model_version"]) == list(old["model_version"])
    assert tables.read(t.USER_REPRESENTATIONS, dt="2026-11-07").count() == other
    scored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nightly job: scored")]
    assert (scored[-1].startswith("nightly job: scored 300 users in ") if from_files else not scored), scored


@pytest.mark.reliability(
    "faults",
    "the model scores NaN vectors",
    "refused before the commit in one line; the published table stays at its version")
@pytest.mark.parametrize("from_files", [True, False])
def test_bad_output_is_refused_and_the_table_is_untouched(tiny_published, monkeypatch, capsys,
                                                          from_files: bool) -> None:
    import torch

    from registry.models import ModelRegistry
    from training.trainer import dump_state, model_from_state

    cfg, tables, tmp = tiny_published
    before = tables.version(t.USER_REPRESENTATIONS)
    real = ModelRegistry.state_bytes

    def nan_weights(self, version):  # noqa: ANN001, ANN202 - the champion's weights, all NaN
        model = model_from_state(real(self, version))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return dump_state(model)

    monkeypatch.setattr(ModelRegistry, "state_bytes", nan_weights)
    assert run(publish, tmp, "--date", TINY_END, overrides=(*OV, f"publish.from_files={from_files}"),
               lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("publish_user_representations failed: refusing to commit outputs/user_representations:")
    assert "rows with NaN/Inf values" in err
    assert tables.version(t.USER_REPRESENTATIONS) == before
    staging = Path(cfg.lake_root) / t.USER_REPRESENTATIONS.name / "_staging"
    assert not staging.exists() or not any(staging.iterdir())  # the refused files are gone


@pytest.mark.reliability(
    "config",
    "no model carries the champion alias",
    "one line saying what to train or which flag to pass")
def test_missing_champion_is_a_clear_error(tiny_pipeline, tmp_path: Path, capsys) -> None:
    cfg, _, _ = tiny_pipeline
    assert run(publish, tmp_path, "--date", TINY_END, overrides=OV, lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("publish_user_representations failed: no version of registered model 'dupn_user_model' carries "
                   "the alias 'champion': train and promote one (python -m jobs.train --mode full ...) or pass "
                   "--model-version N")


@pytest.mark.reliability(
    "config",
    "--model-version naming a version that does not exist",
    "one line naming the model, the version and the versions it has; exit 1; the published table unchanged")
def test_a_model_version_that_does_not_exist(tiny_published, capsys) -> None:
    cfg, tables, tmp = tiny_published
    before = tables.version(t.USER_REPRESENTATIONS)
    assert run(publish, tmp, "--date", TINY_END, "--model-version", "99", overrides=OV, lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("publish_user_representations failed: registered model 'dupn_user_model' has no "
                             "version 99 (its versions: 1")
    assert err[0].endswith("pass one of them to --model-version, or omit it for the champion")
    assert tables.version(t.USER_REPRESENTATIONS) == before


def test_a_user_scored_twice_is_refused_and_the_table_is_untouched(tiny_published) -> None:
    """The nightly job's path on a local lake counts user_id's repeats across the files its tasks wrote
    (``repeated_ids``): a sequence file listed twice publishes every one of its users twice, which the
    checks refuse before the commit, even when the row count matches the population it is given."""
    import pyarrow.parquet as pq

    from core.errors import DataQualityError
    from features.representations import local_paths
    from registry.models import ModelRegistry
    from training import inference
    from training.trainer import model_from_state

    cfg, tables, _ = tiny_published
    before = tables.version(t.USER_REPRESENTATIONS)
    files = tables.files(t.USER_SEQUENCES, dt=TINY_END)
    twice = files + files[:1]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in local_paths(twice) or [])
    once = sum(pq.ParquetFile(p).metadata.num_rows for p in local_paths(files[:1]) or [])
    reg = ModelRegistry(cfg.mlflow)
    state = reg.state_bytes(reg.champion_version())
    dim = model_from_state(state).embedding_dim
    with pytest.raises(DataQualityError, match=rf"user_id not unique \({rows - once} users in {rows} rows\)"):
        inference.publish_from_files(tables, cfg.publish, twice, state, "m", "1", TINY_END, rows, dim, {})
    assert tables.version(t.USER_REPRESENTATIONS) == before


def test_the_model_is_built_once_per_process(tiny_model, spark) -> None:
    from registry.models import ModelRegistry
    from training import inference

    cfg, _, _ = tiny_model
    reg = ModelRegistry(cfg.mlflow)
    state = spark.sparkContext.broadcast(reg.state_bytes(reg.champion_version()))
    start = inference.LOADS["count"]
    a = inference._user_part(state, "run-1")
    b = inference._user_part(state, "run-1")
    assert a is b and inference.LOADS["count"] == start + 1
    c = inference._user_part(spark.sparkContext.broadcast(reg.state_bytes(reg.champion_version())), "run-2")
    assert c is not a and inference.LOADS["count"] == start + 2  # another run's model, even at the same address


def q(published, *args: str) -> int:  # noqa: ANN001
    cfg, _, tmp = published
    return run(query, tmp, *args, overrides=OV, lake=cfg.lake_root)


def test_query_user_text_and_json(tiny_published, capsys) -> None:
    from registry.models import ModelRegistry

    cfg, tables, _ = tiny_published
    dim = ModelRegistry(cfg.mlflow).load().model.embedding_dim
    uid = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).first().user_id
    assert q(tiny_published, "user", str(uid)) == 0
    out = capsys.readouterr().out
    assert f"user {uid}  dt={TINY_END}" in out and "purchasing-power tier" in out and f"{dim} floats" in out
    assert q(tiny_published, "--json", "user", str(uid), "--date", "2026-11-07", "--full") == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["dt"] == "2026-11-07" and len(obj["embedding"]) == dim and abs(sum(obj["ppp_probs"]) - 1) < 1e-4


def test_user_and_tiers_read_the_files_without_spark_and_agree_with_spark(tiny_published, capsys,
                                                                          monkeypatch) -> None:
    """On the embedded engine ``user`` and ``tiers`` read the snapshot's files with Arrow: the same answers
    as the Spark path (``--spark``), and no Spark session is asked for."""
    _, tables, _ = tiny_published
    uid = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).first().user_id
    answers = {}
    for how in ("spark", "arrow"):
        if how == "arrow":
            def no_spark(*_a: object, **_k: object) -> None:
                raise AssertionError("the Arrow path asked for a Spark session")
            monkeypatch.setattr(query, "get_spark", no_spark)
        extra = ["--spark"] if how == "spark" else []
        assert q(tiny_published, "--json", "user", str(uid), "--full", *extra) == 0
        user = json.loads(capsys.readouterr().out)
        assert q(tiny_published, "--json", "tiers", "--date", TINY_END, *extra) == 0
        answers[how] = (user, json.loads(capsys.readouterr().out))
    assert answers["arrow"] == answers["spark"]
    assert q(tiny_published, "user", "42") == 1  # an unknown user is one line on the Arrow path too
    assert "user 42 is not in outputs/user_representations" in capsys.readouterr().err


def test_published_files_are_sorted_by_user_for_point_lookups(tiny_published) -> None:
    """Each file of a published partition is sorted by user_id, so a lookup prunes row groups by their
    user_id statistics."""
    import pyarrow.parquet as pq

    from features.representations import local_paths

    _, tables, _ = tiny_published
    paths = local_paths(tables.files(t.USER_REPRESENTATIONS, dt=TINY_END))
    assert paths
    for path in paths:
        ids = pq.read_table(path, columns=["user_id"]).column("user_id").to_numpy()
        assert len(ids) and np.all(np.diff(ids) > 0), path


def test_query_errors_are_one_line(tiny_published, capsys) -> None:
    assert q(tiny_published, "user", "42") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "query failed: user 42 is not in outputs/user_representations dt=")
    assert q(tiny_published, "user", "42", "--date", "2020-01-01") == 1
    assert "has no date 2020-01-01" in capsys.readouterr().err
    assert q(tiny_published, "tiers", "--version", "999") == 1
    assert "has no version 999" in capsys.readouterr().err


def test_similar_with_measure_cosine_is_the_exact_whole_vector_cosine(tiny_published, capsys) -> None:
    _, tables, _ = tiny_published
    rows = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).collect()
    ids = np.array([r.user_id for r in rows])
    emb = np.array([r.embedding for r in rows], dtype=np.float64)
    target = 3
    cos = emb @ emb[target] / (np.linalg.norm(emb, axis=1).clip(1e-12) * np.linalg.norm(emb[target]))
    cos[target] = -np.inf
    expected = list(ids[np.argsort(-cos, kind="stable")[:5]])
    assert q(tiny_published, "--json", "similar", str(ids[target]), "--k", "5", "--measure", "cosine") == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["measure"] == "cosine" and obj["blocks"] == [] and obj["layout_version"] is None
    got = obj["neighbours"]
    assert [n["user_id"] for n in got] == expected
    assert [round(n["cosine"], 5) for n in got] == [round(float(c), 5) for c in sorted(cos, reverse=True)[:5]]
    assert q(tiny_published, "similar", str(ids[target]), "--k", "5", "--measure", "cosine") == 0
    assert capsys.readouterr().out.startswith(f"5 nearest users to {ids[target]} (cosine over the whole vector; "
                                              f"exact) dt={TINY_END}:")


def test_tiers_sql_and_history(tiny_published, capsys) -> None:
    _, tables, _ = tiny_published
    assert q(tiny_published, "--json", "tiers") == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["dt"] == TINY_END and obj["previous_dt"] == "2026-11-07"
    assert sum(r["users"] for r in obj["tiers"]) == tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).count()
    assert abs(sum(r["share_change_pp"] for r in obj["tiers"])) < 1e-6
    statement = "SELECT dt, count(*) AS n FROM user_representations GROUP BY dt ORDER BY dt"
    assert q(tiny_published, "--json", "sql", statement) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["dt"] for r in res["rows"]] == ["2026-11-07", TINY_END] and "raw_events" in res["views"]
    assert q(tiny_published, "history") == 0
    out = capsys.readouterr().out
    assert "publish_user_representations" in out and TINY_END in out


@pytest.mark.reliability(
    "inputs",
    "an empty scored partition",
    "refused, naming the empty result and the population (not a NaN count)")
def test_an_empty_result_names_the_cause(spark) -> None:
    from core.errors import DataQualityError
    from training.inference import check_representations

    empty = spark.createDataFrame([], t.USER_REPRESENTATIONS.schema)
    with pytest.raises(DataQualityError, match="no rows scored for a serving population of 5$"):
        check_representations(empty, 5, 16)


def test_published_vectors_are_the_models_outputs_on_the_same_users(tiny_published) -> None:
    """The nightly job's Arrow path (``mapInArrow``, flat buffers) publishes what the model's pandas path
    (the registered pyfunc's) computes for the same users."""
    from registry.models import ModelRegistry
    from training.inference import USER_INPUTS, user_outputs

    cfg, tables, _ = tiny_published
    seq = tables.read(t.USER_SEQUENCES, dt=TINY_END).select("user_id", *USER_INPUTS).toPandas()  # tiny
    direct = user_outputs(ModelRegistry(cfg.mlflow).load().model, seq)
    pub = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).select("user_id", "embedding", "ppp_tier").toPandas()
    pub = pub.set_index("user_id").loc[seq["user_id"]]
    np.testing.assert_allclose(np.stack(pub["embedding"]), np.stack(direct["embedding"]), rtol=1e-4, atol=1e-5)
    assert list(pub["ppp_tier"]) == list(direct["ppp_tier"])


def test_arrow_batches_become_the_same_tensors_as_frames_and_ragged_arrays_are_refused() -> None:
    import pandas as pd
    import pyarrow as pa

    from core.errors import PlatformError
    from training.inference import USER_INPUTS, _FLOAT_INPUTS, _SCALAR_INPUTS, arrow_to_batch, frame_to_batch

    rng = np.random.default_rng(0)
    n = 5
    frame = pd.DataFrame({name: (list(rng.integers(0, 9, n)) if name in _SCALAR_INPUTS else
                                 [rng.random(4).astype(np.float32) if name in _FLOAT_INPUTS
                                  else rng.integers(0, 9, 6) for _ in range(n)]) for name in USER_INPUTS})
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    for sliced, rows in ((batch, frame), (batch.slice(2, 3), frame.iloc[2:].reset_index(drop=True))):
        got, want = arrow_to_batch(sliced), frame_to_batch(rows)
        for name in USER_INPUTS:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            assert bool((got[name] == want[name]).all()), name
    frame.at[3, "seq_item"] = frame.at[3, "seq_item"][:4]
    with pytest.raises(PlatformError, match="column 'seq_item' holds arrays of lengths 4..6 in one batch"):
        arrow_to_batch(pa.RecordBatch.from_pandas(frame, preserve_index=False))


def test_scoring_units_cover_every_row_group_once_in_bounded_runs(tmp_path: Path) -> None:
    """The nightly job's tasks: each file's row groups, in order, in runs of at most max_users users (or
    1/tasks of all of them), a row group larger than that alone; empty files give no task."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.inference import plan_units

    paths = []
    for name, rows, group in (("a", 1000, 100), ("b", 250, 250), ("c", 0, 10), ("d", 30, 10)):
        paths.append(str(tmp_path / f"{name}.parquet"))
        pq.write_table(pa.table({"user_id": list(range(rows))}, schema=pa.schema([("user_id", pa.int64())])),
                       paths[-1], row_group_size=group)
    units = plan_units(paths, tasks=None, max_users=300)
    assert [u[0] for u in units] == list(range(len(units)))
    assert [(u[1][-9:], u[2]) for u in units] == [
        ("a.parquet", [0, 1, 2]), ("a.parquet", [3, 4, 5]), ("a.parquet", [6, 7, 8]), ("a.parquet", [9]),
        ("b.parquet", [0]), ("d.parquet", [0, 1, 2])]
    # 1,280 users over 8 tasks: at most 160 per task; b's one row group of 250 stays whole
    units = plan_units(paths, tasks=8, max_users=300)
    assert [len(u[2]) for u in units if u[1].endswith("a.parquet")] == [1] * 10
    assert [u[2] for u in units if not u[1].endswith("a.parquet")] == [[0], [0, 1, 2]]


def test_repeated_ids_counts_what_a_distinct_count_would_across_sorted_files(tmp_path: Path) -> None:
    """The nightly job's uniqueness check (``repeated_ids``): a merge of the files' sorted user_id runs
    in chunks counts exactly the rows minus the distinct values, including repeats that straddle two
    rounds of the merge and repeats inside one file; a file not sorted by user_id is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.errors import PlatformError
    from features.representations import repeated_ids

    rng = np.random.default_rng(3)
    for trial in range(6):
        files, every = [], []
        for i in range(int(rng.integers(1, 6))):
            ids = np.sort(rng.integers(0, 3000, int(rng.integers(0, 2500))))
            every.append(ids)
            files.append(str(tmp_path / f"t{trial}-{i}.parquet"))
            pq.write_table(pa.table({"user_id": pa.array(ids, pa.int64())}), files[-1], row_group_size=700)
        rows = np.concatenate(every)
        want = len(rows) - len(np.unique(rows))
        assert repeated_ids(files, buffered=4096) == want  # chunks of at least 1,024: many merge rounds
        assert repeated_ids(files) == want  # one round
    unique = str(tmp_path / "unique.parquet")
    pq.write_table(pa.table({"user_id": pa.array(np.arange(5000), pa.int64())}), unique)
    assert repeated_ids([unique], buffered=1024) == 0
    # the value that ends one round (1023, the first chunk's last) starts the next one in another file
    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"user_id": pa.array(np.arange(1023, 1024 + 2048), pa.int64())}), other)
    assert repeated_ids([unique, other], buffered=2048) == 2049
    unsorted = str(tmp_path / "unsorted.parquet")
    pq.write_table(pa.table({"user_id": pa.array([3, 1, 2], pa.int64())}), unsorted)
    with pytest.raises(PlatformError, match="unsorted.parquet is not sorted by 'user_id'"):
        repeated_ids([unique, unsorted])
