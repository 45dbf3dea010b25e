"""The heuristic baselines of the comparison (``training/gbdt.py:heuristic_predictions``): one
hand-crafted feature ranks every impression, nothing is learned."""
from __future__ import annotations

import numpy as np

from training.gbdt import heuristic_metrics, heuristic_predictions


def split(n_lists: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Lists of 5 impressions; the clicked one has the highest ``signal`` in 80% of the lists."""
    rng = np.random.default_rng(seed)
    n = n_lists * 5
    click = np.zeros(n, np.float32)
    signal = rng.random(n).astype(np.float32)
    for k in range(n_lists):
        i = k * 5 + rng.integers(5)
        click[i] = 1.0
        if rng.random() < 0.8:
            signal[i] = 2.0
    signal[3] = np.nan  # a missing value ranks last
    return {"task": np.array(["impressions"] * n), "l2r": np.ones(n, np.int32), "ctr_weight": np.ones(n, np.float32),
            "label_click": click, "label_buy": click * (rng.random(n) < 0.3), "l2r_gain": np.ones(n, np.float32),
            "list_id": np.repeat(np.arange(n_lists), 5), "user_id": np.repeat(np.arange(n_lists), 5),
            "signal": signal, "noise": rng.random(n).astype(np.float32)}


def test_a_planted_feature_ranks_and_noise_does_not() -> None:
    data = split()
    good = heuristic_metrics(heuristic_predictions(data, "signal", ["ctr", "l2r"]))
    bad = heuristic_metrics(heuristic_predictions(data, "noise", ["ctr", "l2r"]))
    assert good["ctr_auc"] > 0.85 and good["l2r_ndcg10"] > 0.8
    assert abs(bad["ctr_auc"] - 0.5) < 0.06
    assert "ctr_logloss" not in good and "ctr_ece" not in good  # a score is not a probability
    assert np.isfinite(good["ctcvr_auc"]) and good["l2r_lists"] == 200


def test_only_the_asked_tasks_are_scored() -> None:
    pred = heuristic_predictions(split(), "signal", ["l2r"])
    assert not pred.ctr and len(pred.l2r["score"]) == 1000 and pred.l2r["score"].min() == -1.0
