"""The evaluation protocol's scoring side: metrics against hand-computed values, the paired bootstrap of
the promotion gate, seed summaries and the sampling correction of CTR probabilities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import PromotionConfig
from core.protocol import PPP_TEST_USER, PPP_TRAIN_USER
from registry.models import decide_promotion
from training import evaluation as ev
from training.evaluation import Predictions


def test_auc_matches_the_pair_count() -> None:
    # Positive/negative pairs ranked correctly: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4).
    assert ev.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert ev.auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(ev.auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(ev.auc(np.array([]), np.array([])))


def test_weighted_auc_equals_auc_of_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 2)  # ties
    w = rng.poisson(1.0, 300)
    repeated = ev.auc(np.repeat(y, w), np.repeat(s, w))
    assert ev.weighted_auc(ev._rank_groups(s), y, w.astype(float)) == pytest.approx(repeated)


def test_ndcg_matches_hand_computation() -> None:
    lists = np.array([7, 7, 7, 9, 9, 4, 4])
    relevance = np.array([3.0, 2.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.6])
    # List 7 ranked: rel 2, 0, 3 -> DCG = 2/log2(2) + 0 + 3/log2(4) = 3.5; ideal 3 + 2/log2(3).
    # List 9 ranked: rel 0, 1 -> DCG = 1/log2(3); ideal 1. List 4: equally relevant rows, skipped.
    values, first = ev.ndcg_per_list(lists, relevance, scores, k=10)
    assert sorted(values.tolist()) == pytest.approx(sorted([3.5 / (3 + 2 / math.log2(3)), 1 / math.log2(3)]))
    assert sorted(first.tolist()) == [0, 3]
    at1, _ = ev.ndcg_per_list(lists, relevance, scores, k=1)
    assert sorted(at1.tolist()) == pytest.approx([0.0, 2 / 3])


def test_calibration_metrics() -> None:
    y = np.array([0, 0, 0, 1] * 250, dtype=float)
    calibrated = np.full(1000, 0.25)
    assert ev.expected_calibration_error(y, calibrated) == pytest.approx(0.0, abs=1e-12)
    assert ev.log_loss(y, calibrated) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert ev.expected_calibration_error(y, np.full(1000, 0.6)) == pytest.approx(0.35)


def _pred(n_users: int = 400, quality: float = 1.0, seed: int = 0, ppp_unseen: bool = True) -> Predictions:
    """Predictions whose scores carry ``quality`` times the signal of planted labels (same labels for every
    quality, the noise of the scores comes from ``seed``)."""
    labels = np.random.default_rng(123)
    noise = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 5)
    signal = labels.normal(size=len(users))
    click = (signal + labels.normal(size=len(users)) > 1.0).astype(float)
    score = quality * signal + noise.normal(size=len(users))
    tier = labels.integers(0, 7, n_users)
    probs = np.full((n_users, 7), 0.1)
    right = noise.random(n_users) < 0.3 + 0.6 * min(quality, 1.0)
    probs[np.arange(n_users), np.where(right, tier, (tier + 1) % 7)] = 0.5
    group = np.where(np.arange(n_users) % 3 == 0, PPP_TEST_USER if ppp_unseen else PPP_TRAIN_USER, PPP_TRAIN_USER)
    return Predictions(ctr={"prob": 1 / (1 + np.exp(-score)), "click": click, "buy": click * (signal > 1.5),
                            "user": users},
                       follow={"prob": 1 / (1 + np.exp(-score)), "label": click, "user": users},
                       ppp={"probs": probs, "tier": tier, "ppp_user": group, "user": np.arange(n_users)})


def test_metrics_score_ppp_on_unseen_users_and_report_seen_ones_beside() -> None:
    p = _pred()
    m = ev.metrics(p)
    unseen = p.ppp["ppp_user"] != PPP_TRAIN_USER
    correct = p.ppp["probs"].argmax(1) == p.ppp["tier"]
    assert m["ppp_rows"] == unseen.sum() and m["ppp_rows_seen"] == (~unseen).sum()
    assert m["ppp_accuracy"] == pytest.approx(correct[unseen].mean())
    assert m["ppp_accuracy_seen"] == pytest.approx(correct[~unseen].mean())


def test_cvr_is_scored_on_clicked_impressions_and_ctcvr_on_all() -> None:
    click = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    buy = np.array([1, 0, 0, 0, 0, 0], dtype=float)
    cvr = np.array([0.9, 0.1, 0.2, 0.95, 0.95, 0.95])  # high CVR on unclicked rows does not matter
    p = Predictions(ctr={"prob": np.full(6, 0.5), "cvr_prob": cvr, "ctcvr_prob": 0.5 * cvr, "click": click,
                         "buy": buy, "user": np.arange(6)})
    m = ev.metrics(p)
    assert m["cvr_auc"] == pytest.approx(1.0)
    assert m["ctcvr_auc"] == pytest.approx(ev.auc(buy, 0.5 * cvr))


def test_selection_score_averages_the_models_selection_metrics() -> None:
    assert ev.selection_score({"ctr_auc": 0.7, "follow_auc": 0.6, "ppp_accuracy": float("nan"),
                               "l2r_ndcg10": 0.9}) == pytest.approx(0.65)
    assert math.isnan(ev.selection_score({"l2r_ndcg10": 0.5}))


def test_selection_leaves_out_metrics_scored_on_few_rows_while_another_has_enough() -> None:
    """The demo world's case: CTR on 100k validation rows, PPP accuracy on 307 unseen users."""
    scores = {"ctr_auc": 0.81, "ctr_rows": 100_000, "follow_auc": 0.72, "follow_rows": 10_000,
              "ppp_accuracy": 0.73, "ppp_rows": 307}
    assert ev.selection_score(scores) == pytest.approx((0.81 + 0.72 + 0.73) / 3)      # every metric counts
    assert ev.selection_score(scores, min_rows=1000) == pytest.approx((0.81 + 0.72) / 2)
    # a checkpoint better on every large metric wins however the small one moves
    worse = {**scores, "ctr_auc": 0.80, "follow_auc": 0.70, "ppp_accuracy": 0.79}
    assert ev.selection_score(scores, 1000) > ev.selection_score(worse, 1000)
    assert ev.selection_score(scores) < ev.selection_score(worse)                     # the noise would decide
    # tiny data: no metric has enough rows, so every metric still counts
    tiny = {"ctr_auc": 0.6, "ctr_rows": 50, "ppp_accuracy": 0.4, "ppp_rows": 10}
    assert ev.selection_score(tiny, min_rows=1000) == pytest.approx(0.5)


def test_bootstrap_gate_promotes_a_clearly_better_model_and_blocks_a_clearly_worse_one() -> None:
    cfg = PromotionConfig(resamples=200, confidence=0.95, seed=1)
    good, bad = _pred(quality=1.5, seed=1), _pred(quality=0.3, seed=2)
    better = decide_promotion(good, bad, cfg)
    assert better.promote, better.reason
    assert all(i.low > 0 for i in better.intervals if i.metric in ("ctr_auc", "follow_auc"))
    worse = decide_promotion(bad, good, cfg)
    assert not worse.promote
    assert "ctr_auc" in worse.reason and "[" in worse.describe()


def test_bootstrap_gate_does_not_block_on_noise() -> None:
    # two models of the same quality differing only by score noise: every interval covers zero, no block
    cfg = PromotionConfig(resamples=200, confidence=0.95, seed=3)
    decision = decide_promotion(_pred(quality=1.0, seed=4), _pred(quality=1.0, seed=5), cfg)
    assert decision.promote, decision.reason
    assert all(i.low <= 0 <= i.high or abs(i.delta) < 0.03 for i in decision.intervals)


def test_gate_blocks_a_candidate_that_lost_a_task() -> None:
    champion = _pred()
    candidate = Predictions(ctr=champion.ctr, follow=champion.follow)
    decision = decide_promotion(candidate, champion, PromotionConfig(resamples=50))
    assert not decision.promote and "ppp_accuracy" in decision.reason


def test_seed_summaries_and_noise() -> None:
    a = ev.summarize([0.70, 0.71, 0.72])
    assert a.mean == pytest.approx(0.71) and a.std == pytest.approx(0.01) and a.n == 3
    assert ev.within_noise(a, ev.summarize([0.705, 0.715, 0.72]))
    assert ev.compare(a, ev.summarize([0.60, 0.61, 0.62])) == ">"
    assert ev.compare(ev.summarize([0.60, 0.61, 0.62]), a) == "<"
    assert ev.summarize([float("nan")]).n == 0


def test_sampling_correction_makes_the_mean_predicted_ctr_match_the_unsampled_rate() -> None:
    """Train a logistic model on down-sampled negatives; with the spec's logit offset log(rate), its mean
    predicted CTR on unsampled data matches the observed rate (without it, it is several times too high)."""
    from training.evaluation import batch_predictions, _Collector

    gen = torch.Generator().manual_seed(0)
    n = 60_000
    x = torch.randn(n, 1, generator=gen)
    y = (torch.rand(n, generator=gen) < torch.sigmoid(1.2 * x[:, 0] - 3.5)).float()  # about 5% positive
    rate = 0.1
    keep = (y > 0) | (torch.rand(n, generator=gen) < rate)
    w = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[keep, 0] * w + b, y[keep])
        loss.backward()
        return loss

    opt.step(closure)
    logits = (x[:, 0] * w + b).detach()
    batch = {"n_items": torch.ones(n, dtype=torch.long), "label_click": y.unsqueeze(1),
             "label_buy": torch.zeros(n, 1), "user_id": torch.arange(n)}
    for offset, close in ((math.log(rate), True), (0.0, False)):
        collector = _Collector()
        batch_predictions({"ctr_logit": logits.unsqueeze(1)}, batch, {"ctr": offset}, collector)
        mean = float(collector.result().ctr["prob"].mean())
        observed = float(y.mean())
        assert (abs(mean - observed) < 0.1 * observed) == close, (offset, mean, observed)
