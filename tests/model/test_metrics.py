"""Offline metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import auc, concat, evaluate, ndcg_at_k


def test_auc_matches_the_pair_count() -> None:
    # Positive/negative pairs ranked correctly: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4).
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(auc(np.array([]), np.array([])))


def test_ndcg_matches_hand_computation() -> None:
    groups = np.array([7, 7, 7, 9, 9, 4, 4])
    relevance = np.array([3.0, 2.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.6])
    # Group 7 ranked: rel 2, 0, 3 -> DCG = 2/log2(2) + 0 + 3/log2(4) = 3.5; ideal 3 + 2/log2(3).
    g7 = 3.5 / (3 + 2 / math.log2(3))
    # Group 9 ranked: rel 0, 1 -> DCG = 1/log2(3); ideal 1.
    g9 = 1 / math.log2(3)
    # Group 4: both rows equally relevant -> uninformative, skipped.
    value, n = ndcg_at_k(groups, relevance, scores, k=10)
    assert n == 2
    assert value == pytest.approx((g7 + g9) / 2)
    # The cut-off: at k=1 group 7 scores 2/3, group 9 scores 0.
    value1, _ = ndcg_at_k(groups, relevance, scores, k=1)
    assert value1 == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(ndcg_at_k(np.array([1, 1]), np.array([0.0, 0.0]), np.array([0.3, 0.2]))[0])


def test_evaluate_names_and_values() -> None:
    labels = {
        "task_id": np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3]),
        "label_click": np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=np.float32),
        "label_buy": np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32),
        "label_follow": np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0], dtype=np.float32),
        "label_tier": np.array([-1] * 10 + [0, 2, 2]),
        "l2r_weight": np.array([1, 1, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32),
        "group_id": np.array([0, 0, 1, 1, 5, 5, 6, 6, 0, 0, 0, 0, 0]),
    }
    probs = np.zeros((13, 7))
    probs[10, 0] = probs[11, 2] = probs[12, 1] = 1.0
    outputs = {
        "ctr_prob": np.array([0.1, 0.4, 0.35, 0.8] + [0.5] * 9),
        "ctcvr_prob": np.array([0.1, 0.2, 0.3, 0.4] + [0.5] * 9),
        "l2r_score": np.array([0.0] * 4 + [2.0, 1.0, 3.0, 1.0] + [0.0] * 5),
        "follow_prob": np.array([0.5] * 13),
        "ppp_probs": probs,
    }
    m = evaluate(concat([{k: v[:6] for k, v in outputs.items()}, {k: v[6:] for k, v in outputs.items()}]),
                 labels)
    assert m["ctr_auc"] == pytest.approx(0.75)
    assert m["ctcvr_auc"] == pytest.approx(1.0)
    # L2R rows: clicks (1, 0, 0, 1), scores (2, 1, 3, 1): pairs 2>1 ok, 2<3 wrong, 1<1 tie, 1<3 wrong -> 1.5/4.
    assert m["l2r_auc"] == pytest.approx(0.375)
    # Group 5 ranks the relevant row first (1.0); group 6 second (1/log2(3)).
    assert m["l2r_ndcg10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["l2r_groups"] == 2
    assert math.isnan(m["follow_auc"])  # every follow row is positive
    assert m["ppp_accuracy"] == pytest.approx(2 / 3)
    # Classes 0: f1 1, 1: f1 0 (predicted, never true), 2: precision 1 recall 1/2 -> f1 2/3.
    assert m["ppp_macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["ctr_rows"] == 4 and m["ppp_rows"] == 3
