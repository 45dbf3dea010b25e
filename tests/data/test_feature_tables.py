"""The feature tables of the tiny world: shapes, nulls, uniqueness, Petastorm readability, statistics, drift."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import get_tables
from features.stats import read_stats
from jobs import build_training_set, feature_stats
from tests.conftest import TINY_END, TINY_START, TINY_WORLD, make_config
from tests.helpers import run

FIXED = {"seq_item": "L", "seq_shop": "L", "seq_brand": "L", "seq_category": "L", "seq_behavior": "L",
         "seq_scene": "L", "seq_time_bucket": "L", "seq_log_price": "L", "seq_tags": "LK", "user_dense": "U"}


def lengths(cfg) -> dict[str, int]:  # noqa: ANN001
    L, K = cfg.sequences.max_len, cfg.sequences.max_tags
    return {"L": L, "LK": L * K, "U": t.USER_DENSE_DIM, "Q": cfg.sequences.max_query_tokens, "K": K,
            "F": cfg.inputs.rank_features_dim}


def test_user_sequences_cover_the_serving_population(tiny_pipeline) -> None:
    cfg, tables, _ = tiny_pipeline
    seq = tables.read(t.USER_SEQUENCES, dt=TINY_END)
    active = tables.read(t.EVENTS).where(F.col("dt") <= TINY_END).select("user_id").distinct().count()
    assert seq.count() == active == seq.select("user_id").distinct().count()
    n = lengths(cfg)
    for col, key in FIXED.items():
        assert seq.where(F.size(col) != n[key]).count() == 0, col
    assert seq.where(F.col("seq_len") < 1).count() == 0
    assert seq.where(F.col("seq_len") > cfg.sequences.max_len).count() == 0
    for c in t.USER_SEQUENCES.required_non_null:
        assert seq.where(F.col(c).isNull()).count() == 0, c


def test_training_examples_shapes_and_keys(tiny_pipeline) -> None:
    cfg, tables, _ = tiny_pipeline
    ex = tables.read(t.TRAINING_EXAMPLES)
    assert ex.count() == ex.select("example_id").distinct().count()
    n = lengths(cfg)
    for col, key in {**FIXED, "query_tokens": "Q", "item_tags": "K", "rank_features": "F"}.items():
        assert ex.where(F.size(col) != n[key]).count() == 0, col
    splits = {(r.dt, r.split) for r in ex.select("dt", "split").distinct().collect()}
    assert {s for d, s in splits if d == TINY_END} == {"holdout"}
    assert {s for d, s in splits if d != TINY_END} == {"train"}
    tasks = {r.task for r in ex.select("task").distinct().collect()}
    assert tasks == {"ctr", "l2r", "follow", "ppp"}
    assert ex.where((F.col("task") == "ppp") & ((F.col("label_tier") < 0) | (F.col("label_tier") > 6))).count() == 0
    assert ex.where((F.col("task") != "ppp") & (F.col("label_tier") != -1)).count() == 0


def test_petastorm_reads_the_training_examples(tiny_pipeline) -> None:
    from petastorm import make_batch_reader

    cfg, tables, _ = tiny_pipeline
    files = tables.files(t.TRAINING_EXAMPLES, dt=TINY_END)
    fields = ["seq_item", "seq_tags", "seq_log_price", "rank_features", "label_click", "task_id", "seq_len"]
    total = 0
    with make_batch_reader(files, schema_fields=fields, num_epochs=1, workers_count=1,
                           shuffle_row_groups=False) as reader:
        for batch in reader:
            assert batch.seq_item.shape[1] == cfg.sequences.max_len
            assert batch.seq_tags.shape[1] == cfg.sequences.max_len * cfg.sequences.max_tags
            assert batch.rank_features.dtype == np.float32
            total += len(batch.task_id)
    assert total == tables.read(t.TRAINING_EXAMPLES, dt=TINY_END).count()


def test_serving_statistics_equal_a_direct_numpy_computation(tiny_pipeline) -> None:
    cfg, tables, _ = tiny_pipeline
    stats = {s.feature: s for s in read_stats(tables.read(t.FEATURE_STATS, dt=TINY_END))}
    rows = tables.read(t.USER_SEQUENCES, dt=TINY_END).select("seq_len", "seq_log_price", "user_dense").collect()
    prices = np.concatenate([np.array(r.seq_log_price[:r.seq_len], dtype=np.float64) for r in rows])
    assert stats["seq_log_price"].count == len(prices)
    assert stats["seq_log_price"].mean == pytest.approx(prices.mean(), rel=1e-6)
    assert stats["seq_log_price"].var == pytest.approx(prices.var(), rel=1e-5)
    dense = np.array([r.user_dense for r in rows], dtype=np.float64)
    for i in range(t.USER_DENSE_DIM):
        s = stats[f"user_dense[{i}]"]
        assert s.count == len(rows)
        assert s.mean == pytest.approx(dense[:, i].mean(), rel=1e-5)
        assert s.var == pytest.approx(dense[:, i].var(), rel=1e-4)
    imp = tables.read(t.IMPRESSIONS, dt=TINY_END).select("rank_features").collect()
    rf = np.array([r.rank_features for r in imp], dtype=np.float64)
    for i in range(cfg.inputs.rank_features_dim):
        s = stats[f"rank_features[{i}]"]
        assert s.count == len(rf) and s.mean == pytest.approx(rf[:, i].mean(), rel=1e-5, abs=1e-9)
    # the training population is recorded next to the serving one
    train = {s.feature: s for s in read_stats(tables.read(t.FEATURE_STATS, dt=TINY_END), "training")}
    assert set(train) == set(stats)


def test_drift_check_fails_on_a_deliberately_upsampled_training_set(tiny_pipeline, tmp_path: Path, spark,
                                                                    capsys) -> None:
    cfg, tables, tmp = tiny_pipeline
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "lake", copy / "lake")
    # 300 users give noisier SMDs than the demo world (normal set here: 0.39 worst, up-sampled: 0.56;
    # demo world: 0.49 and 0.74, hence the default 0.65): a threshold between the two on this world
    ov = (*TINY_WORLD, "stats.drift_threshold=0.5")
    # the normal training set passes
    assert run(feature_stats, copy, "--date", TINY_END, "--training-start", TINY_START,
               "--training-end", TINY_END, overrides=ov) == 0
    # positives x40, negatives almost gone, no whole impression lists to dilute them
    up = ("training_set.ctr.positive_upsample=40", "training_set.ctr.negative_rate=0.01",
          "training_set.ctr.cap_per_user_day=1000", "training_set.follow.positive_upsample=40",
          "training_set.follow.negative_rate=0.01", "training_set.follow.cap_per_user_day=1000",
          "training_set.l2r.enabled=false")
    assert run(build_training_set, copy, "--start", TINY_START, "--end", TINY_END, overrides=(*ov, *up)) == 0
    capsys.readouterr()
    assert run(feature_stats, copy, "--date", TINY_END, "--training-start", TINY_START,
               "--training-end", TINY_END, overrides=ov) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("feature_stats failed: training set drifts from the serving population of "
                          f"{TINY_END} above stats.drift_threshold=0.5: rank_features[0]")
    # the serving statistics were still recorded (training keeps using them)
    copy_tables = get_tables(spark, make_config(copy))
    assert copy_tables.last_metadata(t.FEATURE_STATS)["drift"]["rank_features[0]"] > 0.5
