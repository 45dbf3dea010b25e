"""jobs/transfer.py on the tiny world: the four transfer methods (RT, FT, RS, RA) on one user split
into train / valid / test, each choosing its epoch on validation and scored on test once; the
transfer dataset's point in time, the missing-partition errors and the MLflow comparison. Then
the pieces without the job: the split, the loop's model selection (a scripted scorer), RA's
mixed batches against every loss, and RA's original training days.

The job test has its own lake (a copy of the tiny pipeline's input and training tables) and its
own MLflow store, so the snapshot partitions it adds (dt=2026-11-06) do not change what the other
tests of the session see. Real Spark, Delta, Petastorm, MLflow (SQLite) and a SMALL champion.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import pytest
import torch
from pyspark.sql import functions as F
from torch import nn

from core import protocol as pr
from core import tables as t
from core.cli import JobContext
from core.config import load_config
from core.errors import DataQualityError, PlatformError
from features import transfer as td
from jobs import build_sequences, publish_user_representations, train, transfer
from registry.tracking import configure_mlflow
from tests.conftest import SMALL, TINY_END, TINY_WORLD, TRAIN_DAYS, make_config
from tests.helpers import job_argv, run
from training import transfer as tr
from training.data import TensorBatches
from training.losses import LOSS_NAMES, example_weights, task_losses

DAY, SNAPSHOT, DAYS = TINY_END, "2026-11-06", "2"          # examples of 11-07 and 11-08, users as of end of 11-06
EPOCHS = 2
RT_EPOCHS = EPOCHS + 1                                         # transfer.rt_epochs: RT's own cap
OV = (*TINY_WORLD, *SMALL, f"transfer.epochs={EPOCHS}", "transfer.batch_size=64", f"transfer.rt_epochs={RT_EPOCHS}",
      "transfer.rt_lr=0.002")
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


def test_every_method_chooses_its_epoch_on_validation_and_is_tested_once(transfer_env) -> None:
    r = transfer_env["run"]
    metrics = r.data.metrics
    client = mlflow.MlflowClient()
    methods = {m["method"]: m for m in transfer_env["comparison"]["methods"]}
    assert set(methods) == set(tr.METHODS)
    for m in tr.METHODS:
        auc, logloss = metrics[f"{m}_test_auc"], metrics[f"{m}_test_logloss"]
        assert math.isfinite(auc) and 0.0 <= auc <= 1.0, (m, auc)
        assert math.isfinite(logloss) and logloss > 0, (m, logloss)
        assert metrics[f"{m}_seconds"] >= metrics[f"{m}_train_seconds"] > 0
        epochs = RT_EPOCHS if m == "rt" else EPOCHS
        assert metrics[f"{m}_epochs"] == epochs
        # the validation curve has one point per epoch; the chosen epoch is its best (the first on ties)
        curve = sorted(client.get_metric_history(r.info.run_id, f"{m}_valid_auc"), key=lambda x: x.step)
        assert [x.step for x in curve] == list(range(1, epochs + 1)), m
        values = [x.value for x in curve]
        best = values.index(max(values)) + 1
        assert metrics[f"{m}_chosen_epoch"] == best == methods[m]["chosen_epoch"], (m, values)
        assert metrics[f"{m}_chosen_valid_auc"] == pytest.approx(max(values))
        assert methods[m]["valid_aucs"] == pytest.approx(values) and methods[m]["selected_on"] == "valid_auc"
        # the test split is scored once: one value, no curve
        assert len(client.get_metric_history(r.info.run_id, f"{m}_test_auc")) == 1, m
        assert methods[m]["test_auc"] == pytest.approx(auc)
    # nothing is chosen on test any more
    assert not [k for k in metrics if "best" in k]
    assert not [k for m in methods.values() for k in m if "best" in k]
    out = transfer_env["stdout"]
    for m in tr.METHODS:
        assert f"| {m.upper()} |" in out
    assert f"MLflow run {r.info.run_id} (transfer-{DAY})" in out and "best" not in out


def test_the_split_is_identical_for_every_method(transfer_env) -> None:
    tables = transfer_env["tables"]
    methods = {r["method"]: r for r in transfer_env["comparison"]["methods"]}
    df = tables.read(td.TRANSFER_EXAMPLES, dt=DAY)
    expected = {}
    for split in pr.SPLITS:
        row = df.where(F.col("split") == split).agg(
            F.count(F.lit(1)).alias("n"), F.sum(F.pmod("example_id", F.lit(td.FINGERPRINT_MOD))).alias("s")).first()
        expected[split] = (int(row["n"]), int(row["s"]) % td.FINGERPRINT_MOD)
        assert expected[split][0] > 0, split
    for m, r in methods.items():
        for split in pr.SPLITS:
            assert (r[f"{split}_rows"], r[f"{split}_fingerprint"]) == expected[split], (m, split)
    # RA really mixed the original tasks in; the others trained on shop rows only
    assert methods["ra"]["original_rows_per_epoch"] >= methods["ra"]["train_rows"]
    assert all(methods[m]["original_rows_per_epoch"] == 0 for m in ("rt", "ft", "rs"))


def test_the_transfer_split_is_user_disjoint_across_train_valid_and_test(transfer_env) -> None:
    tables, cfg = transfer_env["tables"], transfer_env["cfg"]
    df = tables.read(td.TRANSFER_EXAMPLES, dt=DAY)
    users = {s: {r["user_id"] for r in df.where(F.col("split") == s).select("user_id").distinct().collect()}
             for s in pr.SPLITS}
    assert all(users.values()), {s: len(u) for s, u in users.items()}
    assert not (users["train"] & users["valid"]) and not (users["train"] & users["test"])
    assert not (users["valid"] & users["test"])
    # the split is a function of the user, recomputable from user_id and the config
    tc = cfg.transfer
    again = td.split_of(F.col("user_id"), tc.validation_share, tc.test_share, tc.seed)
    assert df.where(F.col("split") != again).count() == 0


def test_split_of_follows_the_shares_and_rejects_shares_that_leave_no_training_user(spark) -> None:
    users = spark.range(20_000).select(F.col("id").alias("user_id"))
    shares = {r["s"]: r["n"] / 20_000 for r in users.groupBy(td.split_of(F.col("user_id"), 0.15, 0.3, 3).alias("s"))
              .count().withColumnRenamed("count", "n").collect()}
    assert set(shares) == set(pr.SPLITS)
    assert shares["test"] == pytest.approx(0.3, abs=0.015) and shares["valid"] == pytest.approx(0.15, abs=0.015)
    # another seed, another split of the same users
    other = users.where(td.split_of(F.col("user_id"), 0.15, 0.3, 3) != td.split_of(F.col("user_id"), 0.15, 0.3, 4))
    assert other.count() > 1000
    with pytest.raises(PlatformError, match="transfer.validation_share"):
        td.split_of(F.col("user_id"), 0.5, 0.5, 3)


def test_the_dataset_sees_the_users_as_of_the_end_of_the_snapshot_day(transfer_env) -> None:
    tables = transfer_env["tables"]
    df = tables.read(td.TRANSFER_EXAMPLES, dt=DAY)
    assert tables.partitions(td.TRANSFER_EXAMPLES) == [DAY]
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
    from registry.models import ModelRegistry

    published = ModelRegistry(transfer_env["cfg"].mlflow).load()
    assert lengths["a"] == lengths["b"] == published.model.embedding_dim
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
    tables = transfer_env["tables"]
    assert r.data.params["snapshot_dt"] == SNAPSHOT and r.data.params["days"] == DAYS
    assert r.data.params["methods"] == "rt,ft,rs,ra" and r.data.params["ra_mix"] == "2"
    assert r.data.params["validation_share"] == "0.15" and r.data.params["test_share"] == "0.3"
    assert (r.data.params["rt_lr"], r.data.params["rt_epochs"]) == ("0.002", str(RT_EPOCHS))
    assert r.data.params["head_input"] == "dense"  # conf/local.yaml's
    # FT fine-tunes the version that published the snapshot's vectors (the ones RT reads)
    published = tables.read(t.USER_REPRESENTATIONS, dt=SNAPSHOT).select("model_version").distinct()
    assert [row[0] for row in published.collect()] == [r.data.params["base_model_version"]]
    assert r.data.params["rep_model_versions"] == r.data.params["base_model_version"]
    # RA's original rows: the training-split days (commit metadata) up to S, never a validation or test day
    splits = tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]
    assert r.data.params["original_training_days"] == ",".join(d for d in splits["train"] if d <= SNAPSHOT)
    assert r.data.params["original_training_days"] == "2026-11-04,2026-11-05,2026-11-06"
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(r.info.run_id, "transfer")}
    assert arts == {"transfer/comparison.json", "transfer/comparison.md", "transfer/learning_curves.png"}
    for name in ("ft_valid_auc", "ft_valid_logloss", "ft_train_loss", "ft_elapsed_seconds"):
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, name)) == [1, 2], name
    md = Path(mlflow.artifacts.download_artifacts(f"runs:/{r.info.run_id}/transfer/comparison.md")).read_text()
    assert "| RA | all tasks retrained |" in md and "budget: 2 original rows per shop row" in md
    assert "chosen on the validation split" in md and "| chosen epoch |" in md
    meta = tables.last_metadata(td.TRANSFER_EXAMPLES)
    assert meta["mlflow_run_id"] == r.info.run_id and meta["snapshot_dt"] == SNAPSHOT
    assert (meta["validation_share"], meta["test_share"]) == (0.15, 0.3)


def test_shop_features_are_the_main_category_and_standardised_price_and_size(spark) -> None:
    from features.encoding import UNKNOWN, hashed

    items = spark.createDataFrame(
        [(1, 10, 5, 7, None, 9.0), (2, 10, 5, 7, None, 99.0), (3, 10, 6, 8, None, 9.0),
         (4, 20, None, 9, None, None), (5, None, 1, 7, None, 5.0), (6, 30, 1, 8, None, 9.0)],
        "item_id bigint, shop_id bigint, brand_id bigint, category_id bigint, tags array<string>, price double")
    rows = {r["shop_id"]: r for r in td.shop_features(items, 64, 32).collect()}
    assert set(rows) == {10, 20, 30}                                 # items without a shop are ignored
    idx = spark.range(1).select(hashed(F.lit(7), "category_id", 32).alias("c7"),
                                hashed(F.lit(9), "category_id", 32).alias("c9"),
                                hashed(F.lit(10), "shop_id", 64).alias("s10")).first()
    assert rows[10]["shop_category"] == idx["c7"] and rows[20]["shop_category"] == idx["c9"] != UNKNOWN
    assert rows[10]["shop"] == idx["s10"]
    # [mean log price, mean log price relative to the item's category, log item count], standardised over the
    # shops; category 7's mean log price is over every item of it (item 5 has no shop), category 8's is log 10
    m7 = np.mean(np.log([10.0, 100.0, 6.0]))
    raw = np.array([[np.log([10.0, 100.0, 10.0]).mean(), (np.log(10.0) - m7 + np.log(100.0) - m7 + 0.0) / 3, np.log(4)],
                    [0.0, 0.0, np.log(2)],                      # no price -> 0
                    [np.log(10.0), 0.0, np.log(2)]])            # priced like its category: relative price 0
    expected = (raw - raw.mean(0)) / raw.std(0)
    for shop, want in zip((10, 20, 30), expected):
        assert rows[shop]["shop_dense"] == pytest.approx(want.tolist(), abs=1e-5)
    assert td.SHOP_DENSE == ("mean_log_price", "mean_rel_log_price", "log_items")


class _StubTables:
    """The DeltaTables calls :func:`features.transfer.original_training_data` makes, over one DataFrame."""

    def __init__(self, df, metadata):  # noqa: ANN001
        self.df, self.meta = df, metadata

    def exists(self, spec) -> bool:  # noqa: ANN001
        return True

    def version(self, spec) -> int:  # noqa: ANN001
        return 3

    def metadata(self, spec, version):  # noqa: ANN001, ANN201
        return self.meta

    def partitions(self, spec, version=None):  # noqa: ANN001, ANN201
        return sorted({r["dt"] for r in self.df.select("dt").distinct().collect()})

    def read(self, spec, dt=None, version=None):  # noqa: ANN001, ANN201
        return self.df.where(F.col("dt").isin(*dt))

    def files(self, spec, dt=None, version=None):  # noqa: ANN001, ANN201
        return [f"file:///lake/features/training_examples/dt={d}/part-0.parquet" for d in dt]


def _original(df, metadata: dict[str, Any], until: str) -> td.OriginalData:  # noqa: ANN001
    return td.original_training_data(cast(Any, _StubTables(df, metadata)), until)


def test_ra_reads_the_training_split_days_of_the_commit_metadata_only(spark) -> None:
    days = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    df = spark.createDataFrame([(days[0], "train"), (days[0], "train"), (days[1], "train"), (days[2], "valid"),
                                (days[3], "test")], "dt string, split string")
    splits = {"train": days[:2], "valid": [days[2]], "test": [days[3]]}
    # the validation and test days are before `until` and never used
    data = _original(df, {"splits": splits}, days[3])
    assert (data.days, data.rows, data.version) == (tuple(days[:2]), 3, 3)
    assert [f.split("/")[-2] for f in data.files] == [f"dt={d}" for d in days[:2]]
    assert _original(df, {"splits": splits}, days[0]).days == (days[0],)
    with pytest.raises(PlatformError, match="no training-split day on or before"):
        _original(df, {"splits": splits}, "2026-10-31")
    with pytest.raises(PlatformError, match="records no 'splits'"):
        _original(df, {"holdout_days": days[2:]}, days[3])
    # metadata that calls a validation day a training day is caught by the rows' own split
    wrong = {"train": days[:3], "valid": [], "test": [days[3]]}
    with pytest.raises(DataQualityError, match="other splits"):
        _original(df, {"splits": wrong}, days[3])


# ---------------------------------------------------------------------- pieces without Spark
def test_window_and_unknown_days() -> None:
    import datetime as dt

    w = td.TransferWindow.of(dt.date(2026, 11, 14), 2)
    assert w.snapshot == "2026-11-12" and w.example_days == ("2026-11-13", "2026-11-14")
    with pytest.raises(PlatformError):
        td.TransferWindow.of(dt.date(2026, 11, 14), 0)


class _EpochModel(nn.Module):
    """A "model" whose one weight counts the epochs it was trained for (so a score says which weights it saw)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def shop_logit(self, batch) -> torch.Tensor:  # noqa: ANN001
        return self.w.expand(len(batch["label"]))


class _EpochTask:
    method = "fake"

    def __init__(self) -> None:
        self.model = _EpochModel()

    def step(self, batch) -> dict[str, float]:  # noqa: ANN001
        with torch.no_grad():
            self.model.w.add_(1.0)                    # one batch per epoch: w = epochs trained
        return {"loss": 0.0}


def _split(ids: list[int]) -> TensorBatches:
    return TensorBatches({"example_id": torch.tensor(ids), "label": torch.tensor([i % 2 for i in ids])},
                         batch_size=len(ids), shuffle=False)


def _scripted(valid: TensorBatches, valid_auc: dict[int, float],
              valid_logloss: dict[int, float] | None = None):  # noqa: ANN202
    """A scorer: validation metrics scripted per epoch; test AUC = 0.5 + epoch / 100 (best at the last
    epoch, so choosing on test would pick another epoch). Records every call."""
    calls: list[tuple[str, int]] = []

    def scorer(model: _EpochModel, source) -> tr.ShopEval:  # noqa: ANN001
        epoch = int(model.w.item())
        if source is valid:
            calls.append(("valid", epoch))
            loss = (valid_logloss or {}).get(epoch, 0.6)
            return tr.ShopEval(valid_auc[epoch], loss, source.count_rows(), 7)
        calls.append(("test", epoch))
        return tr.ShopEval(0.5 + epoch / 100, 0.69, source.count_rows(), 9)

    return scorer, calls


def test_fit_keeps_the_best_validation_epoch_and_scores_test_once_with_it() -> None:
    train, valid, test = _split([1, 2, 3, 4]), _split([5, 6, 7]), _split([8, 9])
    scorer, calls = _scripted(valid, {1: 0.60, 2: 0.72, 3: 0.65, 4: 0.72})
    task = _EpochTask()
    result = tr.fit(task, train, valid, test, epochs=4, scorer=scorer)
    assert calls == [("valid", 1), ("valid", 2), ("valid", 3), ("valid", 4), ("test", 2)]
    assert result.chosen_epoch == 2 and result.selected_on == "valid_auc"      # the first of the tied best
    assert float(task.model.w.detach()) == 2.0                                        # the chosen weights are kept
    assert result.test_auc == pytest.approx(0.52) and result.test_logloss == pytest.approx(0.69)
    assert result.valid_aucs == [0.60, 0.72, 0.65, 0.72] and result.chosen["valid_auc"] == 0.72
    assert (result.train_rows, result.valid_rows, result.test_rows) == (4, 3, 2)
    assert result.train_fingerprint == 10 and result.seconds >= result.train_seconds
    # the report: the chosen epoch and the validation curve, test once, no best-on-test column
    table = tr.comparison_table([result])
    assert "| 2 of 4 | 0.6000, **0.7200**, 0.6500, 0.7200 | 0.5200 |" in table and "best" not in table
    summary = tr.comparison_metrics([result])
    assert summary["fake_chosen_epoch"] == 2 and summary["fake_test_auc"] == pytest.approx(0.52)


def test_fit_stops_after_patience_epochs_without_a_better_validation_score() -> None:
    train, valid, test = _split([1, 2, 3, 4]), _split([5, 6, 7]), _split([8, 9])
    scorer, calls = _scripted(valid, {1: 0.60, 2: 0.72, 3: 0.71, 4: 0.72, 5: 0.90, 6: 0.95})
    task = _EpochTask()
    result = tr.fit(task, train, valid, test, epochs=6, scorer=scorer, patience=2)
    # epochs 3 and 4 are not better than epoch 2 (a tie is not better): training stops after epoch 4
    assert calls == [("valid", 1), ("valid", 2), ("valid", 3), ("valid", 4), ("test", 2)]
    assert result.chosen_epoch == 2 and len(result.epochs) == 4 and float(task.model.w.detach()) == 2.0
    assert "| 2 of 4 |" in tr.comparison_table([result])
    # without patience every epoch of the cap is trained, and a later better epoch is chosen
    scorer, calls = _scripted(valid, {1: 0.60, 2: 0.72, 3: 0.71, 4: 0.72, 5: 0.90, 6: 0.95})
    assert tr.fit(_EpochTask(), train, valid, test, epochs=6, scorer=scorer).chosen_epoch == 6
    with pytest.raises(PlatformError, match="transfer.patience"):
        tr.fit(_EpochTask(), train, valid, test, epochs=2, scorer=scorer, patience=-1)


def test_ft_trains_its_pre_trained_tower_at_a_fraction_of_the_learning_rate() -> None:
    from tests.model.conftest import tiny_spec
    from training.model import UserTower

    spec = tiny_spec()
    net = tr.ShopPreferenceNet(UserTower(spec), hidden=8, dropout=0.0)
    groups = tr.ShopTask("ft", net, 0.01, tower_lr_scale=0.1).optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    tower = {id(p) for p in net.tower.parameters()}
    assert {id(p) for p in groups[0]["params"]} == tower
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.parameters()} - tower != set()
    assert len(tr.ShopTask("rs", net, 0.01).optimizer.param_groups) == 1


def test_fit_falls_back_to_validation_log_loss_when_the_auc_is_undefined() -> None:
    train, valid, test = _split([1, 2]), _split([3, 4]), _split([5, 6])
    nan = float("nan")
    scorer, calls = _scripted(valid, {1: nan, 2: nan, 3: nan}, {1: 0.7, 2: 0.6, 3: 0.65})
    result = tr.fit(_EpochTask(), train, valid, test, epochs=3, scorer=scorer)
    assert (result.chosen_epoch, result.selected_on) == (2, "valid_logloss")
    assert calls[-1] == ("test", 2) and [c for c in calls if c[0] == "test"] == [("test", 2)]


def _original_batch() -> dict[str, torch.Tensor]:
    """Four example groups (G = 3): an L2R impression list, a CTR list, a follow row, a training user's tier."""
    kinds = t.KIND_IDS
    return {
        "seq_item": torch.full((4, 5), 2), "kind_id": torch.tensor([kinds["impressions"]] * 2 + [kinds["follow"],
                                                                                                 kinds["ppp"]]),
        "n_items": torch.tensor([3, 2, 0, 0]), "item": torch.tensor([[4, 5, 6], [7, 8, 0], [0] * 3, [0] * 3]),
        "label_click": torch.tensor([[1.0, 0, 0], [0, 1, 0], [0] * 3, [0] * 3]),
        "label_buy": torch.tensor([[1.0, 0, 0], [0, 0, 0], [0] * 3, [0] * 3]),
        "ctr_weight": torch.tensor([[1.0, 1, 1], [1, 2, 0], [0] * 3, [0] * 3]),
        "l2r": torch.tensor([1, 0, 0, 0]), "l2r_gain": torch.tensor([[2.0, 1, 1], [1, 1, 0], [0] * 3, [0] * 3]),
        "talent": torch.tensor([0, 0, 9, 0]), "label_follow": torch.tensor([0.0, 0, 1, 0]),
        "follow_weight": torch.tensor([0.0, 0, 1.5, 0]), "label_tier": torch.tensor([-1, -1, -1, 4]),
        "ppp_user": torch.tensor([0, 0, 0, pr.PPP_TRAIN_USER])}


def _shop_batch() -> dict[str, torch.Tensor]:
    return {"seq_item": torch.ones(3, 5, dtype=torch.int64), "shop": torch.tensor([7, 8, 9]),
            "shop_category": torch.tensor([3, 3, 4]), "shop_dense": torch.randn(3, len(td.SHOP_DENSE)),
            "label": torch.tensor([1, 0, 1]), "example_id": torch.tensor([11, 12, 13])}


def _outputs(n: int, g: int) -> dict[str, torch.Tensor]:
    return {"ctr_logit": torch.randn(n, g), "cvr_logit": torch.randn(n, g), "l2r_score": torch.randn(n, g),
            "follow_logit": torch.randn(n), "ppp_logits": torch.randn(n, 7)}


def test_merge_batches_gives_zero_weight_to_the_other_sides_rows_in_every_loss() -> None:
    torch.manual_seed(0)
    shop, orig = _shop_batch(), _original_batch()
    out = tr.merge_batches(shop, orig)
    ns = 3
    assert out["kind_id"].tolist() == [tr.SHOP_KIND] * ns + orig["kind_id"].tolist()
    assert tr.SHOP_KIND == len(t.KINDS) and tr.SHOP_KIND not in t.KIND_IDS.values()
    assert out["n_items"].tolist()[:ns] == [0] * ns and out["label_tier"].tolist()[:ns] == [-1] * ns
    assert out["label_click"].shape == (7, 3) and not out["ctr_weight"][:ns].any()
    assert out["shop"].tolist() == [7, 8, 9, 0, 0, 0, 0] and out["label"].tolist() == [1, 0, 1, 0, 0, 0, 0]
    assert tr.shop_rows(out).tolist() == [True] * ns + [False] * 4
    # every original loss: weight 0 on the shop rows, the original weights unchanged on the others
    for name in LOSS_NAMES:
        w_orig, w_out = example_weights(orig, name), example_weights(out, name)
        assert w_orig.sum() > 0, name                        # the loss has examples, the check can fail
        assert not w_out[:ns].any(), name
        assert torch.equal(w_out[ns:], w_orig), name
    # ... so the losses on the mixed batch equal those on the original rows alone, whatever the shop rows' outputs
    orig_out = _outputs(4, 3)
    mixed_out = {k: torch.cat([v_shop, orig_out[k]]) for k, v_shop in _outputs(ns, 3).items()}
    alone, mixed = task_losses(orig_out, orig, LOSS_NAMES), task_losses(mixed_out, out, LOSS_NAMES)
    for name in LOSS_NAMES:
        assert float(mixed[name]) == pytest.approx(float(alone[name]), rel=1e-6), name
    # and the shop loss ignores the original rows
    logit = torch.randn(ns)
    mixed_logit = torch.cat([logit, torch.randn(4) * 5])
    assert float(tr.shop_loss(mixed_logit, out)) == pytest.approx(float(tr.shop_loss(logit, shop)), rel=1e-6)
    with pytest.raises(ValueError, match="seq_item"):
        tr.merge_batches(shop, {**orig, "seq_item": torch.full((4, 6), 2)})
    with pytest.raises(ValueError, match="kind_id"):
        tr.merge_batches(shop, {k: v for k, v in orig.items() if k != "kind_id"})


def test_mixed_batches_stack_ra_mix_original_rows_on_each_shop_batch() -> None:
    shop = TensorBatches(_shop_batch(), batch_size=2, shuffle=False)
    orig = TensorBatches(_original_batch(), batch_size=4, shuffle=False)
    batches = list(tr.MixedBatches(shop, orig, ratio=2).batches(0))
    assert [int(tr.shop_rows(b).sum()) for b in batches] == [2, 1]
    assert [len(b["kind_id"]) for b in batches] == [2 + 4, 1 + 2]
    with pytest.raises(ValueError, match="ra_mix"):
        tr.MixedBatches(shop, orig, ratio=0)
