"""bench_slices: the slices of the test day's impressions, cut the same way from DUPN's rows (the
sequence) and from the GBDT's (its features), and the table it writes."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from benchmarks.bench_slices import (GROUPS, SLICES, batch_slices, gbdt_slices, markdown, recent_bucket,
                                     slice_masks, slice_metrics)

EDGES = [60, 300, 1800, 3600, 86400, 259200, 604800]


def test_slices_cross_the_two_cuts() -> None:
    masks = slice_masks(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert list(masks) == list(SLICES)
    assert masks["all"].tolist() == [True] * 4
    assert masks["search & recent"].tolist() == [True, False, False, False]
    assert masks["recommend & not recent"].tolist() == [False, False, False, True]
    assert masks["not recent"].tolist() == [False, True, False, True]


def test_recent_is_a_time_bucket_edge() -> None:
    assert recent_bucket(EDGES, 1800) == 3 and recent_bucket(EDGES, 60) == 1
    with pytest.raises(SystemExit, match="not a time-bucket edge"):
        recent_bucket(EDGES, 900)


def test_a_slot_is_recent_when_its_category_is_in_the_sequence_within_the_edge() -> None:
    # 2 rows of 3 slots; row 0 has a query and 2 slots, row 1 none and 3 slots
    batch = {
        "label_click": torch.zeros(2, 3), "n_items": torch.tensor([2, 3]),
        "query_tokens": torch.tensor([[5, 0], [0, 0]]),
        "seq_len": torch.tensor([3, 1]),
        "seq_category": torch.tensor([[7, 8, 9, 4], [4, 9, 9, 9]]),
        "seq_time_bucket": torch.tensor([[1, 3, 4, 1], [2, 1, 1, 1]]),  # row 0's 4th and row 1's 2nd+ are padding
        "item_category": torch.tensor([[8, 9, 7], [4, 9, 7]]),
    }
    search, recent = batch_slices(batch, last_bucket=3)
    assert search.tolist() == [True, True, False, False, False]
    # row 0: 8 in bucket 3 (recent), 9 in bucket 4 (not); row 1: 4 in bucket 2 (recent), 9 only in padding
    assert recent.tolist() == [True, False, True, False, False]


def test_the_gbdt_side_reads_the_hours_since_the_last_behaviour_in_the_category() -> None:
    data = {"has_query": np.array([1.0, 0.0, 1.0, 0.0]), "cat_last_age_h": np.array([0.5, 0.51, np.nan, 0.1])}
    search, recent = gbdt_slices(data, np.array([True, True, True, False]), 1800)
    assert search.tolist() == [True, False, True] and recent.tolist() == [True, False, False]


def test_metrics_per_slice_and_the_table() -> None:
    rng = np.random.default_rng(0)
    n = 400
    search, recent = rng.random(n) < 0.5, rng.random(n) < 0.3
    click = (rng.random(n) < 0.2).astype(float)
    ctr = {"click": click, "buy": click * (rng.random(n) < 0.5), "prob": click * 0.5 + rng.random(n) * 0.6,
           "ctcvr_prob": rng.random(n)}
    masks = slice_masks(search, recent)
    got = slice_metrics(masks, ctr)
    assert got["all"]["rows"] == n and got["search & recent"]["rows"] == float((search & recent).sum())
    assert got["all"]["ctr_auc"] > 0.7 and abs(got["all"]["ctcvr_auc"] - 0.5) < 0.15
    assert got["recent"]["click_rate"] == pytest.approx(click[recent].mean())
    oracle = {"all": {"ctr_auc": 0.85, "ctcvr_auc": 0.9}, "search": {"ctr_auc": 0.8, "ctcvr_auc": 0.88}}
    worse = {k: {**v, "ctr_auc": v["ctr_auc"] - 0.01} for k, v in got.items()}
    text = markdown({"context": {"command": "python -m benchmarks.bench_slices", "machine": "2 cores",
                                 "seconds": 10.0, "data": "x rows", "test_day": "2026-11-14", "seed": 0,
                                 "recent_s": 1800},
                     "dupn": got, "gbdt": got, "oracle": oracle, "gbdt_without": {label: worse for label in GROUPS}})
    for name in SLICES:
        assert f"| {name} |" in text
    assert "| 0.8500 |" in text and "–" in text  # the oracle where scored, a dash where not
    assert text.count("-0.0100") == len(GROUPS) * len(SLICES)
    assert not math.isnan(got["recommend & not recent"]["ctr_auc"])


def test_dupn_rows_and_gbdt_rows_fall_in_the_same_slices(tiny_pipeline) -> None:  # noqa: ANN001
    """On a built world: every test impression is in the same (user, search, recent, click) cell on both sides."""
    from core import tables as t
    from features.gbdt import feature_columns, gbdt_spec
    from jobs import build_gbdt_features
    from tests.conftest import TINY_END, TINY_START, TINY_WORLD
    from tests.helpers import run
    from training.datasets import training_data
    from training.gbdt import load_split, task_rows
    from training.losses import slot_mask
    from training.trainer import eval_source

    cfg, tables, tmp = tiny_pipeline
    spec = gbdt_spec(cfg.inputs.rank_features_dim)
    if not tables.exists(spec):
        assert run(build_gbdt_features, tmp, "--start", TINY_START, "--end", TINY_END,
                   overrides=tuple(TINY_WORLD)) == 0
    data = training_data(tables, tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]["train"], ["ctr"])
    test = load_split(tables.files(spec, list(data.test_days), tables.version(spec)),
                      sorted(feature_columns(cfg.inputs.rank_features_dim)))
    rows = task_rows(test, "ctr", training=False)
    g_search, g_recent = gbdt_slices(test, rows, 1800)
    gbdt_cells = Counter(zip(test["user_id"][rows].tolist(), g_search.tolist(), g_recent.tolist(),
                             test["label_click"][rows].tolist()))
    dupn_cells: Counter = Counter()
    for batch in eval_source(cfg.training, data.test_files, ["ctr"]).batches():
        search, recent = batch_slices(batch, recent_bucket(cfg.sequences.time_bucket_edges_s, 1800))
        slots = slot_mask(batch)
        users = batch["user_id"].unsqueeze(1).expand_as(slots)[slots].tolist()
        clicks = batch["label_click"][slots].tolist()
        dupn_cells.update(zip(users, search.tolist(), recent.tolist(), clicks))
    assert sum(gbdt_cells.values()) > 100 and dupn_cells == gbdt_cells
    assert any(k[2] for k in gbdt_cells) and any(not k[2] for k in gbdt_cells)  # both kinds occur
