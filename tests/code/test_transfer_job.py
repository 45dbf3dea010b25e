"""jobs/transfer.py on the tiny world: the four transfer methods (RT, FT, RS, RA) on one split, the
transfer dataset's point in time, the missing-partition errors and the MLflow comparison.

The test has its own lake (a copy of the tiny pipeline's input and training tables) and its own
MLflow store, so the snapshot partitions it adds (dt=2026-11-06) do not change what the other
tests of the session see. Real Spark, Delta, Petastorm, MLflow (SQLite) and a SMALL champion.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from pyspark.sql import functions as F

from core import tables as t
from core.cli import JobContext
from core.config import load_config
from core.errors import PlatformError
from jobs import build_sequences, publish_user_representations, train, transfer
from registry.tracking import configure_mlflow
from tests.conftest import SMALL, TINY_END, TINY_WORLD, TRAIN_DAYS, make_config
from tests.helpers import job_argv, run
from training import transfer as tr

DAY, SNAPSHOT, DAYS = TINY_END, "2026-11-06", "2"          # examples of 11-07 and 11-08, users as of end of 11-06
OV = (*TINY_WORLD, *SMALL, "transfer.epochs=2", "transfer.batch_size=64")
ARGS = ("--date", DAY, "--days", DAYS, "--ra-mix", "2")


def _direct(tmp: Path, *args: str) -> str:
    """The job's ``run`` called in-process (its summary, or its PlatformError): run_job's printing is
    checked separately with capsys, a module fixture cannot capture output reliably."""
    ns = transfer.parser().parse_args([*job_argv(tmp, *OV), *args])
    return transfer.run(JobContext(transfer.JOB, ns, load_config(ns.config, ns.overrides), "test-transfer"))


def _error(tmp: Path, *args: str) -> str:
    with pytest.raises(PlatformError) as info:
        _direct(tmp, *args)
    return str(info.value)


@pytest.fixture(scope="module")
def transfer_env(tiny_pipeline, tmp_path_factory):  # noqa: ANN001, ANN201
    """Own lake + MLflow store: a SMALL champion, the snapshot partitions of 2026-11-06 (built step by
    step, recording the transfer job's error while each is missing) and one full transfer run."""
    _, _, lake_tmp = tiny_pipeline
    tmp = tmp_path_factory.mktemp("transfer")
    src, dst = lake_tmp / "lake", tmp / "lake"
    skip = shutil.ignore_patterns("_staging")
    for name in ("events", "items", "users", "shop_prefs", "impressions", "follows", "ppp_labels"):
        shutil.copytree(src / "raw" / name, dst / "raw" / name, ignore=skip)
    for name in ("training_examples", "feature_stats"):
        shutil.copytree(src / "features" / name, dst / "features" / name, ignore=skip)
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=(*TINY_WORLD, *SMALL)) == 0
    errors = {"sequences": _error(tmp, *ARGS)}
    assert run(build_sequences, tmp, "--date", SNAPSHOT, overrides=OV) == 0
    errors["representations"] = _error(tmp, *ARGS)
    assert run(publish_user_representations, tmp, "--date", SNAPSHOT, overrides=OV) == 0
    out = _direct(tmp, *ARGS)
    cfg = make_config(tmp, *OV)
    from core.delta import get_tables
    from core.spark import get_spark

    tables = get_tables(get_spark(cfg), cfg)
    configure_mlflow(cfg.mlflow)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list",
                              filter_string=f"attributes.run_name = 'transfer-{DAY}'")
    assert len(runs) == 1
    comparison = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{runs[0].info.run_id}/transfer/comparison.json")).read_text())
    return {"cfg": cfg, "tables": tables, "tmp": tmp, "stdout": out, "errors": errors, "run": runs[0],
            "comparison": comparison}


def test_all_four_methods_report_finite_aucs_and_times(transfer_env) -> None:
    metrics = transfer_env["run"].data.metrics
    for m in tr.METHODS:
        auc = metrics[f"{m}_test_auc"]
        assert math.isfinite(auc) and 0.0 <= auc <= 1.0, (m, auc)
        assert metrics[f"{m}_seconds"] > 0 and metrics[f"{m}_train_seconds"] > 0
        assert metrics[f"{m}_epochs"] == 2
    out = transfer_env["stdout"]
    for m in tr.METHODS:
        assert f"| {m.upper()} |" in out
    assert f"MLflow run {transfer_env['run'].info.run_id} (transfer-{DAY})" in out


def test_the_split_is_identical_for_every_method(transfer_env) -> None:
    tables, cfg = transfer_env["tables"], transfer_env["cfg"]
    methods = {r["method"]: r for r in transfer_env["comparison"]["methods"]}
    assert set(methods) == set(tr.METHODS)
    df = tables.read(tr.TRANSFER_EXAMPLES, dt=DAY)
    expected = {}
    for split in ("train", "test"):
        row = df.where(F.col("split") == split).agg(
            F.count(F.lit(1)).alias("n"), F.sum(F.pmod("example_id", F.lit(tr.FINGERPRINT_MOD))).alias("s")).first()
        expected[split] = (int(row["n"]), int(row["s"]) % tr.FINGERPRINT_MOD)
        assert expected[split][0] > 0
    for m, r in methods.items():
        assert (r["train_rows"], r["train_fingerprint"]) == expected["train"], m
        assert (r["test_rows"], r["test_fingerprint"]) == expected["test"], m
    # RA really mixed the original tasks in; the others trained on shop rows only
    assert methods["ra"]["original_rows_per_epoch"] >= methods["ra"]["train_rows"]
    assert all(methods[m]["original_rows_per_epoch"] == 0 for m in ("rt", "ft", "rs"))
    # the split is a function of the user: no user on both sides, and recomputable from user_id
    assert df.groupBy("user_id").agg(F.countDistinct("split").alias("k")).where("k > 1").count() == 0
    again = tr.split_of(F.col("user_id"), cfg.transfer.test_share, cfg.transfer.seed)
    assert df.where(F.col("split") != again).count() == 0


def test_the_dataset_sees_the_users_as_of_the_end_of_the_snapshot_day(transfer_env) -> None:
    tables = transfer_env["tables"]
    df = tables.read(tr.TRANSFER_EXAMPLES, dt=DAY)
    assert tables.partitions(tr.TRANSFER_EXAMPLES) == [DAY]
    assert {r["snapshot_dt"] for r in df.select("snapshot_dt").distinct().collect()} == {SNAPSHOT}
    assert {r["example_dt"] for r in df.select("example_dt").distinct().collect()} == {"2026-11-07", DAY}
    # every example is later than the snapshot instant (end of S), the behaviour strictly earlier
    assert df.where(F.col("event_time") < F.col("snapshot_time")).count() == 0
    assert df.where(F.col("snapshot_time") != F.lit("2026-11-07 00:00:00").cast("timestamp")).count() == 0
    # the user side is exactly the snapshot of S: sequences and the published vectors of dt=S
    seq = tables.read(t.USER_SEQUENCES, dt=SNAPSHOT).select(
        "user_id", F.col("seq_item").alias("s_item"), F.col("seq_len").alias("s_len"),
        F.col("user_dense").alias("s_dense"))
    rep = tables.read(t.USER_REPRESENTATIONS, dt=SNAPSHOT).select("user_id", F.col("embedding").alias("r_emb"))
    joined = df.join(seq, "user_id", "left").join(rep, "user_id", "left")
    bad = joined.where(F.col("s_len").isNull() | F.col("r_emb").isNull() | (F.col("seq_item") != F.col("s_item"))
                       | (F.col("seq_len") != F.col("s_len")) | (F.col("user_dense") != F.col("s_dense"))
                       | (F.col("embedding") != F.col("r_emb")))
    assert bad.count() == 0
    # the examples are every valid shop impression of (S, D] whose user is in the snapshot
    labels = tables.read(t.SHOP_PREFS, dt=["2026-11-07", DAY]).dropDuplicates()
    users = tables.read(t.USER_SEQUENCES, dt=SNAPSHOT).select("user_id")
    assert df.count() == labels.join(users, "user_id").count() > 0
    # fixed-length arrays (Petastorm stacks them)
    lengths = df.agg(F.min(F.size("embedding")).alias("a"), F.max(F.size("embedding")).alias("b"),
                     F.min(F.size("seq_item")).alias("c"), F.max(F.size("seq_item")).alias("d")).first()
    assert lengths["a"] == lengths["b"] == transfer_env["cfg"].training.model.representation_dim
    assert lengths["c"] == lengths["d"] == transfer_env["cfg"].sequences.max_len


def test_missing_snapshot_partitions_name_the_job_to_run(transfer_env, capsys) -> None:
    assert transfer_env["errors"]["sequences"] == (
        f"features/user_sequences has no partition dt={SNAPSHOT} (the transfer snapshot): "
        f"run build_sequences --date {SNAPSHOT}")
    assert transfer_env["errors"]["representations"] == (
        f"outputs/user_representations has no partition dt={SNAPSHOT} (the vectors representation "
        f"transfer reads): run publish_user_representations --date {SNAPSHOT}")
    # through the job's entry point: exit 1 and one line (snapshot 2026-11-03 was never built)
    capsys.readouterr()
    assert run(transfer, transfer_env["tmp"], "--date", DAY, "--days", "5", overrides=OV) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("transfer failed: features/user_sequences has no partition dt=2026-11-03 (the transfer "
                       "snapshot): run build_sequences --date 2026-11-03")


def test_the_comparison_is_logged_to_mlflow(transfer_env) -> None:
    r = transfer_env["run"]
    assert r.data.params["snapshot_dt"] == SNAPSHOT and r.data.params["days"] == DAYS
    assert r.data.params["methods"] == "rt,ft,rs,ra" and r.data.params["ra_mix"] == "2"
    # FT fine-tunes the version that published the snapshot's vectors (the ones RT reads)
    published = transfer_env["tables"].read(t.USER_REPRESENTATIONS, dt=SNAPSHOT).select("model_version").distinct()
    assert [row[0] for row in published.collect()] == [r.data.params["base_model_version"]]
    assert r.data.params["rep_model_versions"] == r.data.params["base_model_version"]
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(r.info.run_id, "transfer")}
    assert arts == {"transfer/comparison.json", "transfer/comparison.md", "transfer/learning_curves.png"}
    curve = client.get_metric_history(r.info.run_id, "ft_test_auc")
    assert sorted(m.step for m in curve) == [1, 2]
    md = Path(mlflow.artifacts.download_artifacts(f"runs:/{r.info.run_id}/transfer/comparison.md")).read_text()
    assert "| RA | all tasks retrained |" in md and "budget: 2 original rows per shop row" in md
    meta = transfer_env["tables"].last_metadata(tr.TRANSFER_EXAMPLES)
    assert meta["mlflow_run_id"] == r.info.run_id and meta["snapshot_dt"] == SNAPSHOT


def test_shop_features_are_the_main_category_and_standardised_price_and_size(spark) -> None:
    from features.encoding import UNKNOWN, hashed

    items = spark.createDataFrame(
        [(1, 10, 5, 7, None, 9.0), (2, 10, 5, 7, None, 99.0), (3, 10, 6, 8, None, 9.0),
         (4, 20, None, 9, None, None), (5, None, 1, 7, None, 5.0)],
        "item_id bigint, shop_id bigint, brand_id bigint, category_id bigint, tags array<string>, price double")
    rows = {r["shop_id"]: r for r in tr.shop_features(items, 64, 32).collect()}
    assert set(rows) == {10, 20}                                     # items without a shop are ignored
    idx = spark.range(1).select(hashed(F.lit(7), "category_id", 32).alias("c7"),
                                hashed(F.lit(9), "category_id", 32).alias("c9"),
                                hashed(F.lit(10), "shop_id", 64).alias("s10")).first()
    assert rows[10]["shop_category"] == idx["c7"] and rows[20]["shop_category"] == idx["c9"] != UNKNOWN
    assert rows[10]["shop"] == idx["s10"]
    # [mean log price, log item count], each standardised over the two shops: +1 / -1
    assert rows[10]["shop_dense"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert rows[20]["shop_dense"] == pytest.approx([-1.0, -1.0], abs=1e-5)  # no price -> 0, below shop 10


# ---------------------------------------------------------------------- pieces without Spark
def test_window_and_unknown_days() -> None:
    import datetime as dt

    w = tr.TransferWindow.of(dt.date(2026, 11, 14), 2)
    assert w.snapshot == "2026-11-12" and w.example_days == ("2026-11-13", "2026-11-14")
    with pytest.raises(PlatformError):
        tr.TransferWindow.of(dt.date(2026, 11, 14), 0)


def test_merge_batches_masks_shop_rows_out_of_the_original_tasks() -> None:
    from training.losses import row_counts

    shop = {"seq_item": torch.ones(3, 5, dtype=torch.int64), "shop": torch.tensor([7, 8, 9]),
            "label": torch.tensor([1, 0, 1]), "example_id": torch.tensor([11, 12, 13])}
    orig = {"seq_item": torch.full((4, 5), 2), "task_id": torch.tensor([0, 0, 2, 3]),
            "label_tier": torch.tensor([-1, -1, -1, 4]), "sample_weight": torch.ones(4)}
    out = tr.merge_batches(shop, orig)
    assert out["task_id"].tolist() == [tr.SHOP_TASK_ID] * 3 + [0, 0, 2, 3]
    assert out["shop"].tolist() == [7, 8, 9, 0, 0, 0, 0] and out["label"].tolist() == [1, 0, 1, 0, 0, 0, 0]
    assert out["label_tier"].tolist()[:3] == [-1, -1, -1] and out["sample_weight"].tolist() == [1.0] * 7
    assert tr.shop_rows(out).tolist() == [True] * 3 + [False] * 4
    assert row_counts(out, ["ctr", "follow", "ppp"]) == {"ctr": 2, "follow": 1, "ppp": 1}
    with pytest.raises(ValueError, match="seq_item"):
        tr.merge_batches(shop, {**orig, "seq_item": torch.full((4, 6), 2)})
