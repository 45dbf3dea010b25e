"""The oracle scores documented in docs/demo_world.md are what the default world gives."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import tables as t
from core.config import load_config
from core.delta import get_tables
from features.demo_world import generate_world
from features.oracle import L2R_LIST, oracle_scores, rank_auc
from tests.conftest import LOCAL_CONF, TEST_SPARK, TINY_END

DOC = Path(__file__).resolve().parents[2] / "docs" / "demo_world.md"


def documented() -> dict[str, float]:
    text = DOC.read_text()
    block = text.split("<!-- oracle-table:begin -->")[1].split("<!-- oracle-table:end -->")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([0-9.]+) \|$", block, re.M)}


@pytest.mark.slow
def test_default_world_reproduces_documented_oracle_scores(spark, tmp_path: Path) -> None:
    cfg = load_config(LOCAL_CONF, [f"lake_root={tmp_path / 'lake'}", *TEST_SPARK])
    tables = get_tables(spark, cfg)
    for spec, df in generate_world(spark, cfg.demo, cfg.inputs.rank_features_dim).items():
        tables.write(df, spec, "overwrite")
    last_day = tables.partitions(t.EVENTS)[-1]
    assert last_day == "2026-11-14"
    got = oracle_scores(tables, [last_day], cfg.training_set)
    want = documented()
    assert set(want) <= set(got)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=6e-5), name


def test_every_oracle_metric_is_documented(tiny_world) -> None:
    cfg, tables = tiny_world
    got = oracle_scores(tables, [tables.partitions(t.EVENTS)[-1]], cfg.training_set)
    assert set(got) == set(documented())


def test_the_oracle_scores_l2r_on_the_rows_the_models_are_scored_on(tiny_pipeline) -> None:
    """The L2R AUC of a model covers the test day's search lists with a click; the oracle's must cover
    the same impressions, or the share of the oracle's lift compares two populations."""
    from pyspark.sql import functions as F

    from features.oracle import l2r_rows, truth_with_lists

    _, tables, _ = tiny_pipeline
    rows = l2r_rows(truth_with_lists(tables, [TINY_END]))
    oracle_rows = rows.where(F.col("list_clicks") > 0)
    ex = tables.read(t.TRAINING_EXAMPLES, dt=TINY_END).where((F.col("l2r") == 1) & (F.col("split") == "test"))
    model_rows = ex.agg(F.sum("n_items")).first()[0]
    assert oracle_rows.count() == model_rows > 0
    assert oracle_rows.select(*L2R_LIST).distinct().count() == ex.select("list_id").distinct().count()
    assert rows.where(F.col("list_clicks") == 0).count() > 0  # lists without a click exist and are left out
    scored = oracle_scores(tables, [TINY_END])["l2r_auc"]
    assert scored == pytest.approx(rank_auc(oracle_rows, "score", "clicked"))
    assert scored < rank_auc(rows, "score", "clicked")


def test_rank_auc_is_the_exact_auc_with_ties_over_several_ranges(spark) -> None:
    """rank_auc cuts the distinct scores into ranges (no window over the whole table): its AUC is the exact
    Mann-Whitney AUC with averaged tie ranks, whatever the number of ranges."""
    import numpy as np

    from training.evaluation import auc

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=3000), 2)  # about 600 distinct values: many ties
    labels = (rng.random(3000) < 1 / (1 + np.exp(-scores))).astype(int)
    df = spark.createDataFrame([(float(s), int(y)) for s, y in zip(scores, labels)], "score double, y int")
    want = auc(labels, scores)
    cached = spark.sparkContext._jsc.getPersistentRDDs().size()
    for buckets in (1, 4, 16):
        assert rank_auc(df, "score", "y", buckets=buckets) == pytest.approx(want, abs=1e-12)
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == cached  # its one cached pass is released
    assert rank_auc(df.where("y = 1"), "score", "y") != rank_auc(df.where("y = 1"), "score", "y")  # NaN: no negatives
