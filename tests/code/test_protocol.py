"""The evaluation protocol on the tiny world's training set: time-ordered splits, user-disjoint PPP
labels, and model selection that never reads the test split."""
from __future__ import annotations

import pytest

from core import protocol as pr
from core import tables as t
from core.errors import PlatformError


def test_split_days_cut_a_range_in_time_order() -> None:
    days = [f"2026-11-{d:02d}" for d in range(1, 8)]
    s = pr.split_days(list(reversed(days)), validation_days=2, test_days=1)
    assert s.train == tuple(days[:4]) and s.valid == tuple(days[4:6]) and s.test == (days[6],)
    with pytest.raises(PlatformError, match="leaves no training day"):
        pr.split_days(days[:3], validation_days=2, test_days=1)


def test_training_set_splits_are_time_ordered_and_ppp_users_disjoint(tiny_pipeline) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    cfg, tables, _ = tiny_pipeline
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    splits = meta["splits"]
    assert max(splits["train"]) < min(splits["valid"]) <= max(splits["valid"]) < min(splits["test"])
    df = tables.read(t.TRAINING_EXAMPLES)
    by_day = {(r["dt"], r["split"]) for r in df.select("dt", "split").distinct().collect()}
    for split, days in splits.items():
        for day in days:
            assert {s for d, s in by_day if d == day} == {split}, day
    ppp = df.where(F.col("kind") == "ppp")
    groups = {(r["split"], r["ppp_user"]) for r in ppp.select("split", "ppp_user").distinct().collect()}
    assert {g for s, g in groups if s == pr.TRAIN} == {pr.PPP_TRAIN_USER}
    assert {g for s, g in groups if s == pr.VALID} <= {pr.PPP_TRAIN_USER, pr.PPP_VALID_USER}
    assert {g for s, g in groups if s == pr.TEST} <= {pr.PPP_TRAIN_USER, pr.PPP_TEST_USER}
    # the label group is a function of the user: users held out anywhere never have a training label
    train_users = {r["user_id"] for r in ppp.where(F.col("split") == pr.TRAIN).select("user_id").distinct().collect()}
    held = {r["user_id"] for r in ppp.where(F.col("ppp_user") != pr.PPP_TRAIN_USER).select("user_id")
            .distinct().collect()}
    assert held and not (held & train_users)
    per_user = ppp.groupBy("user_id").agg(F.countDistinct("ppp_user").alias("n")).where(F.col("n") > 1).count()
    assert per_user == 0
    # the validation and test splits are unsampled: every impression of those days is there
    imp = tables.read(t.IMPRESSIONS, dt=[*splits["valid"], *splits["test"]]).count()
    slots = df.where(F.col("split") != pr.TRAIN).agg(F.sum("n_items")).first()[0]
    assert slots == imp


def test_model_selection_never_reads_the_test_split(tiny_pipeline, monkeypatch) -> None:  # noqa: ANN001
    """Full training reads training and validation files only; the test files are read afterwards, once
    for the candidate (and once for the champion, by the gate)."""
    import petastorm

    from core.config import load_config
    from training.datasets import serving_statistics, training_data
    from training.spec import ModelSpec
    from training.trainer import TrainPlan, train_process
    from tests.conftest import LOCAL_CONF, SMALL
    import datetime as dt

    cfg, tables, _ = tiny_pipeline
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    data = training_data(tables, meta["splits"]["train"], cfg.training.tasks)
    stats = serving_statistics(tables, dt.date.fromisoformat(data.test_days[-1]), cfg.inputs.rank_features_dim)
    small = load_config(LOCAL_CONF, [*SMALL, "training.epochs=2", "training.early_stopping.min_delta=0"])
    spec = ModelSpec.from_config(small, tasks=data.tasks, **stats.model_inputs(small.training.model.price_reference))
    read: list[str] = []
    original = petastorm.make_batch_reader

    def spy(files, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        read.extend(files)
        return original(files, *args, **kwargs)

    monkeypatch.setattr(petastorm, "make_batch_reader", spy)
    plan = TrainPlan(spec=spec.to_dict(), training=small.training, train_files=data.train_files,
                     valid_files=data.valid_files, epochs=2, select=True, progress=False)
    result = train_process(plan)
    assert result is not None and result.evals
    assert read and set(read) <= set(data.train_files) | set(data.valid_files)
    assert not set(read) & set(data.test_files)
    # selection kept the best validation score among the scorings
    assert result.selected["selection_score"] == max(e["selection_score"] for e in result.evals)
