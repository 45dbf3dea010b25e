"""The network on the GBDT's columns (training/feature_mlp.py): its encoding, its tasks and its protocol."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.protocol import PPP_TEST_USER, PPP_TRAIN_USER, PPP_VALID_USER
from training import evaluation as ev
from training.feature_mlp import FeatureEncoder, FeatureMLPParams, fit_task, run_feature_mlp
from training.gbdt import task_rows

FEATURES = ["signal", "noise", "target_category"]


def _split(n_lists: int, seed: int, ppp_group: int) -> dict[str, np.ndarray]:
    """Lists of 10 impressions whose click depends on a non-linear function of ``signal`` and on the target's
    category, follow rows and PPP rows whose label is a band of ``signal``; NaN in ``noise`` now and then."""
    rng = np.random.default_rng(seed)
    n_imp, n_fol, n_ppp = 10 * n_lists, 2000, 3000
    n = n_imp + n_fol + n_ppp
    signal = rng.normal(0.0, 1.0, n).astype(np.float32)
    category = rng.integers(0, 6, n).astype(np.float32)
    noise = np.where(rng.random(n) < 0.2, np.nan, rng.normal(0.0, 1.0, n)).astype(np.float32)
    logit = 2.5 * np.abs(signal) - 2.0 + np.where(category == 3, 1.5, 0.0)  # |signal|: no linear model gets it
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    buy = click * (rng.random(n) < np.where(signal > 0, 0.6, 0.05))
    task = np.array(["impressions"] * n_imp + ["follow"] * n_fol + ["ppp"] * n_ppp, dtype=object)
    is_imp = task == "impressions"
    tier = np.where(task == "ppp", np.clip(np.digitize(signal, [-1.2, -0.6, -0.2, 0.2, 0.6, 1.2]), 0, 6), -1)
    group = np.full(n, PPP_TRAIN_USER)
    group[(task == "ppp") & (rng.random(n) < 0.5)] = ppp_group
    return {
        "task": task, "split": np.zeros(n), "user_id": np.arange(n),
        "list_id": np.where(is_imp, np.arange(n) // 10, -1),
        "l2r": is_imp.astype(np.int32), "label_click": np.where(is_imp, click, 0.0),
        "label_buy": np.where(is_imp, buy, 0.0), "l2r_gain": np.where(is_imp, 1.0 + 3.0 * buy, 0.0),
        "ctr_weight": is_imp.astype(np.float32), "label_follow": np.where(task == "follow", click, 0.0),
        "follow_weight": (task == "follow").astype(np.float32), "label_tier": tier.astype(np.int64),
        "ppp_user": group, "signal": signal, "noise": noise, "target_category": category,
    }


def test_the_encoding_gives_pieces_missing_indicators_and_an_unseen_category_its_own_row() -> None:
    x = np.array([[0.0, 1.0, 2.0], [1.0, np.nan, 0.0], [2.0, 3.0, 1.0], [3.0, 2.0, 2.0]], np.float32)
    enc = FeatureEncoder(x, FEATURES, bins=3, category_dim=4)
    assert enc.missing_column.tolist() == [1]  # only "noise" has gaps in training
    with torch.no_grad():
        out = enc(torch.tensor([[1.5, np.nan, 2.0], [99.0, 2.0, 7.0]]))
    pieces_signal = out[:, :3]  # knots 0, 1, 2, 3 -> three pieces
    assert torch.allclose(pieces_signal[0], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(pieces_signal[1], torch.ones(3))  # above the last knot: every piece full
    n_pieces = int(enc.piece_column.numel())
    assert float(out[0, n_pieces]) == 1.0 and float(out[1, n_pieces]) == 0.0  # the missing indicator
    assert out[0, 3:n_pieces].abs().sum() == 0  # a missing value fills none of its pieces
    table = enc.tables[0]
    assert torch.equal(out[1, n_pieces + 1:], table.weight[table.num_embeddings - 1])  # unseen category 7
    assert torch.equal(out[0, n_pieces + 1:], table.weight[2])


def test_fixed_knots_replace_a_columns_training_quantiles() -> None:
    """``knots`` gives a column its own knots (here one piece: a scalar input); the others keep their quantiles."""
    x = np.array([[0.0, 1.0, 2.0], [1.0, np.nan, 0.0], [2.0, 3.0, 1.0], [3.0, 2.0, 2.0]], np.float32)
    enc = FeatureEncoder(x, FEATURES, bins=3, category_dim=4, knots={FEATURES[0]: [0.0, 10.0]})
    assert enc.piece_column.tolist().count(0) == 1 and enc.piece_column.tolist().count(1) == 3
    with torch.no_grad():
        out = enc(torch.tensor([[2.5, 1.0, 2.0]]))
    assert float(out[0, 0]) == pytest.approx(0.25)


def test_a_follow_prior_encoding_reads_the_priors_as_dupns_follow_head_does() -> None:
    """bench_comparison's ``logs`` rows give the feature MLP the follow head's log priors as one linear input each;
    ``fixed`` rows keep the values and use model.prior_pieces' knots."""
    from benchmarks.bench_comparison import FOLLOW_PRIORS, follow_prior_encoding
    from training.model import PRIOR_COUNT_KNOTS, PRIOR_RATE_KNOTS

    train = {c: np.array([0.0, 10.0, 400.0] if "imps" in c else [0.05, 0.2, 0.5], np.float32) for c in FOLLOW_PRIORS}
    (logs,), knots = follow_prior_encoding("logs", (train,))
    np.testing.assert_allclose(logs["talent_imps_prev"], np.log1p([0.0, 10.0, 400.0]) / 4.0, rtol=1e-6)
    np.testing.assert_allclose(logs["user_follow_rate_prev"], np.log([0.05, 0.2, 0.5]) / 3.0, rtol=1e-6)
    assert knots["talent_imps_prev"] == pytest.approx([0.0, np.log1p(400.0) / 4.0])
    (same,), fixed = follow_prior_encoding("fixed", (train,))
    assert same is train and fixed["talent_follow_rate_prev"] == list(PRIOR_RATE_KNOTS)
    assert fixed["user_follow_imps_prev"] == list(PRIOR_COUNT_KNOTS)
    with pytest.raises(ValueError, match="fixed or logs"):
        follow_prior_encoding("quantiles", (train,))


def test_each_task_learns_a_non_linear_rule_and_keeps_its_best_epoch_on_validation() -> None:
    train, valid = _split(1500, 0, PPP_VALID_USER), _split(600, 1, PPP_VALID_USER)
    params = FeatureMLPParams(hidden=(32,), max_epochs=6, patience=2, batch_size=128)
    model, epoch, rows = fit_task("ctr", train, valid, FEATURES, params, seed=0)
    assert 1 <= epoch <= params.max_epochs and rows == int(task_rows(train, "ctr", True).sum())
    rows_va = task_rows(valid, "ctr", False)
    x = np.stack([valid[f][rows_va] for f in FEATURES], axis=1)
    with torch.no_grad():
        score = model(torch.as_tensor(x)).squeeze(1).numpy()
    truth = 2.5 * np.abs(valid["signal"][rows_va]) + np.where(valid["target_category"][rows_va] == 3, 1.5, 0.0)
    assert ev.auc(valid["label_click"][rows_va], score) > ev.auc(valid["label_click"][rows_va], truth) - 0.02
    assert ev.auc(valid["label_click"][rows_va], score) > 0.75


@pytest.mark.parametrize("seed", [0])
def test_run_scores_every_task_on_the_gbdts_rows_and_test_once(seed: int) -> None:
    train, valid, test = _split(1200, 0, PPP_VALID_USER), _split(400, 1, PPP_VALID_USER), \
        _split(400, 2, PPP_TEST_USER)
    params = FeatureMLPParams(hidden=(32,), max_epochs=4, patience=2, batch_size=128)
    seen: list[str] = []
    res = run_feature_mlp(train, valid, test, {t: FEATURES for t in ("ctr", "cvr", "l2r", "follow", "ppp")},
                          ["ctr", "l2r", "follow", "ppp"], params, seed, on_task=lambda t, _: seen.append(t))
    assert seen == ["ctr", "cvr", "l2r", "follow", "ppp"]  # ctr brings cvr along, as the GBDT's does
    m = ev.metrics(res.test)
    assert m["ctr_rows"] == task_rows(test, "ctr", False).sum()
    assert np.allclose(res.test.ctr["ctcvr_prob"], res.test.ctr["prob"] * res.test.ctr["cvr_prob"])
    assert m["ctr_auc"] > 0.75 and m["cvr_auc"] > 0.75 and m["follow_auc"] > 0.75
    assert m["l2r_ndcg10"] > 0.6 and m["ppp_accuracy"] > 0.4  # 7 bands of one feature: chance is about 0.15
    assert np.allclose(res.test.ppp["probs"].sum(axis=1), 1.0, atol=1e-5)
    # PPP is scored on the test users (unseen in training) and also reported on the training users
    assert m["ppp_rows"] == ((test["task"] == "ppp") & (test["ppp_user"] == PPP_TEST_USER)).sum()
    assert set(res.rounds) == set(seen) and all(1 <= e <= 4 for e in res.rounds.values())
    assert res.train_examples == sum(int(task_rows(train, t, True).sum()) for t in ("ctr", "l2r", "follow", "ppp"))
