"""The feature tables of the tiny world: shapes, nulls, uniqueness, Petastorm readability, statistics, drift."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import get_tables
from features import encoding as enc
from features import stats as st
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
    G = cfg.training_set.group_size
    # one row per example group; every example (impression slot, follow impression, label) has its own id
    assert ex.count() == ex.select("group_id").distinct().count()
    ids = ex.where(F.col("kind") == "impressions").select(F.explode(F.slice("example_id", F.lit(1), F.col("n_items")))
                                                          .alias("id"))
    assert ids.count() == ids.distinct().count() > 0 and ids.where(F.col("id") == 0).count() == 0
    n = lengths(cfg)
    slot = {c: G for c in t.SLOT_COLUMNS}
    sizes = {**{c: n[k] for c, k in FIXED.items()}, "query_tokens": n["Q"], **slot,
             "item_tags": G * n["K"], "rank_features": G * n["F"]}
    for col, size in sizes.items():
        assert ex.where(F.size(col) != size).count() == 0, col
    for c in t.TRAINING_EXAMPLES.required_non_null:
        assert ex.where(F.col(c).isNull()).count() == 0, c
    # kinds and their ids; impression rows hold 1..G items, the slots past n_items are padding
    kinds = {(r.kind, r.kind_id) for r in ex.select("kind", "kind_id").distinct().collect()}
    assert kinds == {(k, t.KIND_IDS[k]) for k in t.KINDS}
    imp = ex.where(F.col("kind") == "impressions")
    assert imp.where((F.col("n_items") < 1) | (F.col("n_items") > G)).count() == 0
    assert ex.where((F.col("kind") != "impressions") & (F.col("n_items") != 0)).count() == 0
    padding = imp.where(F.exists(F.slice(F.concat("ctr_weight", F.array_repeat(F.lit(0.0).cast("float"), G)),
                                         F.col("n_items") + 1, G), lambda w: w != 0))
    assert padding.count() == 0
    assert imp.where(F.col("n_items") < G).where(F.col("item")[G - 1] != 0).count() == 0
    # L2R lists are search lists with a query and a click
    l2r = imp.where(F.col("l2r") == 1)
    assert l2r.count() > 0 and l2r.where(F.col("query_tokens")[0] < 2).count() == 0
    assert l2r.groupBy("list_id").agg(F.sum(F.aggregate("label_click", F.lit(0.0), lambda a, x: a + x))
                                      .alias("c")).where(F.col("c") < 1).count() == 0
    # splits by day: the last day tests, the one before validates
    splits = {(r.dt, r.split) for r in ex.select("dt", "split").distinct().collect()}
    assert {s for d, s in splits if d == TINY_END} == {"test"}
    assert {s for d, s in splits if d == "2026-11-07"} == {"valid"}
    assert {s for d, s in splits if d < "2026-11-07"} == {"train"}
    assert ex.where((F.col("kind") == "ppp") & ((F.col("label_tier") < 0) | (F.col("label_tier") > 6))).count() == 0
    assert ex.where((F.col("kind") != "ppp") & (F.col("label_tier") != -1)).count() == 0
    assert ex.where((F.col("kind") == "follow") & ((F.col("talent") < 2) | (F.col("follow_weight") <= 0))).count() == 0


def test_petastorm_reads_the_training_examples(tiny_pipeline) -> None:
    from petastorm import make_batch_reader

    cfg, tables, _ = tiny_pipeline
    G, F_ = cfg.training_set.group_size, cfg.inputs.rank_features_dim
    files = tables.files(t.TRAINING_EXAMPLES, dt=TINY_END)
    fields = ["seq_item", "seq_tags", "seq_log_price", "rank_features", "label_click", "item_tags", "kind_id",
              "n_items", "seq_len"]
    total = 0
    with make_batch_reader(files, schema_fields=fields, num_epochs=1, workers_count=1,
                           shuffle_row_groups=False) as reader:
        for batch in reader:
            assert batch.seq_item.shape[1] == cfg.sequences.max_len
            assert batch.seq_tags.shape[1] == cfg.sequences.max_len * cfg.sequences.max_tags
            assert batch.rank_features.shape[1] == G * F_ and batch.rank_features.dtype == np.float32
            assert batch.label_click.shape[1] == G and batch.item_tags.shape[1] == G * cfg.sequences.max_tags
            total += len(batch.kind_id)
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
    # the mean log price of each (hashed) category of the item snapshot, and prices relative to it
    buckets = cfg.sequences.hash_buckets.category_id
    items = tables.read(t.ITEMS).select("price", enc.hashed(F.col("category_id"), "category_id", buckets)
                                        .alias("cat")).toPandas()
    items["lp"] = np.log1p(items["price"].astype(np.float64))
    priced = items[items["lp"] > 0]
    means = priced.groupby("cat")["lp"].mean()
    names = {f for f in stats if f.startswith(f"{st.CATEGORY_PRICE}[")}
    assert names == {f"{st.CATEGORY_PRICE}[{c}]" for c in means.index}
    for cat, mean in means.items():
        s = stats[f"{st.CATEGORY_PRICE}[{cat}]"]
        assert s.count == (priced["cat"] == cat).sum() and s.mean == pytest.approx(mean, rel=1e-6), cat
    rel = priced["lp"] - priced["cat"].map(means)
    assert stats[st.REL_PRICE].count == len(rel) and stats[st.REL_PRICE].var == pytest.approx(rel.var(ddof=0), rel=1e-5)
    # the same over the serving users' behaviours (valid positions with a price), per behaviour's category
    seq = tables.read(t.USER_SEQUENCES, dt=TINY_END).select("seq_len", "seq_log_price", "seq_category").collect()
    beh = pd.DataFrame({"cat": np.concatenate([np.array(r.seq_category[:r.seq_len]) for r in seq]),
                        "lp": np.concatenate([np.array(r.seq_log_price[:r.seq_len], np.float64) for r in seq])})
    beh = beh[beh["lp"] > 0]
    visited = beh.groupby("cat")["lp"].mean()
    assert {f for f in stats if f.startswith(f"{st.BEHAVIOUR_CATEGORY_PRICE}[")} == \
        {f"{st.BEHAVIOUR_CATEGORY_PRICE}[{c}]" for c in visited.index}
    for cat, mean in visited.items():
        s = stats[f"{st.BEHAVIOUR_CATEGORY_PRICE}[{cat}]"]
        assert s.count == (beh["cat"] == cat).sum() and s.mean == pytest.approx(mean, rel=1e-6), cat
    rel_b = beh["lp"] - beh["cat"].map(visited)
    assert stats[st.BEHAVIOUR_REL_PRICE].count == len(rel_b)
    assert stats[st.BEHAVIOUR_REL_PRICE].var == pytest.approx(rel_b.var(ddof=0), rel=1e-5)
    reference = st.category_prices(stats.values(), "behaviours")
    assert all(reference[c] == pytest.approx(visited[c], rel=1e-6) for c in visited.index)
    # the training population is recorded next to the serving one (the category prices are no population)
    train = {s.feature: s for s in read_stats(tables.read(t.FEATURE_STATS, dt=TINY_END), "training")}
    snapshot = {f for f in stats if f.startswith((f"{st.CATEGORY_PRICE}[", f"{st.BEHAVIOUR_CATEGORY_PRICE}["))
                or f in (st.REL_PRICE, st.BEHAVIOUR_REL_PRICE)}
    assert set(train) == set(stats) - snapshot and "rank_features[0]" in train


def test_drift_check_fails_on_a_deliberately_skewed_training_set(tiny_pipeline, tmp_path: Path, spark,
                                                                 capsys) -> None:
    cfg, tables, tmp = tiny_pipeline
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "lake", copy / "lake")
    # the tiny world's normal training set drifts up to 0.47 (user_dense[0]: examples are stamped during
    # the day, the serving snapshot at its end); with almost no negatives left, rank_features[0] drifts
    # 0.62: a threshold between the two on this world
    ov = (*TINY_WORLD, "stats.drift_threshold=0.55")
    # the normal training set passes
    assert run(feature_stats, copy, "--date", TINY_END, "--training-start", TINY_START,
               "--training-end", TINY_END, overrides=ov) == 0
    assert "drift (SMD, worst first): " in capsys.readouterr().out
    # negatives almost gone (positives weighted x40), no whole impression lists to dilute them
    skew = ("training_set.ctr.positive_upsample=40", "training_set.ctr.negative_rate=0.001",
            "training_set.follow.positive_upsample=40", "training_set.follow.negative_rate=0.001",
            "training_set.l2r.enabled=false")
    assert run(build_training_set, copy, "--start", TINY_START, "--end", TINY_END, overrides=(*ov, *skew)) == 0
    capsys.readouterr()
    assert run(feature_stats, copy, "--date", TINY_END, "--training-start", TINY_START,
               "--training-end", TINY_END, overrides=ov) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("feature_stats failed: training set drifts from the serving population of "
                          f"{TINY_END} above stats.drift_threshold=0.55: rank_features[0] (")
    # the serving statistics were still recorded (training keeps using them)
    copy_tables = get_tables(spark, make_config(copy))
    assert copy_tables.last_metadata(t.FEATURE_STATS)["drift"]["rank_features[0]"] > 0.55
