"""The tabular multi-task models (training/tabular.py): every design × weighting learns a planted signal
through the platform's trainer, GradNorm balances tabular tasks, the split and the promotion gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import TrainingConfig, WeightingConfig
from features.tabular import permutation_splits
from training.data import TensorBatches
from training.step import TrainTask
from training.tabular import (TabularModel, TabularPredictions, TabularSpec, TabularWorkload, bootstrap, metrics,
                              predict, selection_score)
from training.trainer import TrainPlan, model_from_state, train_process
from training.weighting import build_weighting

DESIGNS = ("shared_bottom", "mmoe", "cgc", "ple", "cross_stitch")
WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")


def encoding(n_cat: int = 2, n_dense: int = 2) -> dict:
    return {"categorical": [f"c{i}" for i in range(n_cat)],
            "vocab": {f"c{i}": ["a", "b", "c", "d"] for i in range(n_cat)},
            "dense": [f"d{i}" for i in range(n_dense)], "log": [], "mean": [0.0] * n_dense, "std": [1.0] * n_dense,
            "tasks": [{"name": "easy", "column": "y1", "kind": "binary", "classes": ["0", "1"], "positive": "1"},
                      {"name": "tier", "column": "y2", "kind": "multiclass", "classes": ["x", "y", "z"],
                       "positive": None}]}


def planted(n: int, seed: int) -> dict[str, torch.Tensor]:
    """easy = (c0 is 'a') xor (d0 > 0); tier = the id of c1 modulo 3: both learnable, neither a constant."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(2, 6, size=(n, 2))
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    easy = ((cat[:, 0] == 2) ^ (dense[:, 0] > 0)).astype(np.int64)
    tier = (cat[:, 1] % 3).astype(np.int64)
    return {"cat": torch.as_tensor(cat, dtype=torch.int64), "dense": torch.as_tensor(dense),
            "labels": torch.as_tensor(np.stack([easy, tier], axis=1))}


def spec(architecture: str = "shared_bottom", tasks: tuple[str, ...] = ("easy", "tier")) -> TabularSpec:
    """Dense columns binned at quartiles of N(0, 1) (``tabular.dense_bins``), so every design trains with pieces."""
    enc = {**encoding(), "bins": 4, "edges": [[-3.0, -0.67, 0.0, 0.67, 3.0]] * 2}
    return TabularSpec(name="toy", encoding=enc, tasks=tasks, architecture=architecture, num_experts=3,
                       expert_dim=16, dropout=0.0, embedding_dim=4, bottom_hidden=(32, 16), tower_hidden=(8,))


def training(weighting: str = "fixed", **kw) -> TrainingConfig:  # noqa: ANN003
    return TrainingConfig(optimizer="adam", lr=0.01, batch_size=64, epochs=kw.pop("epochs", 6),
                          weighting=WeightingConfig(kind=weighting),
                          early_stopping={"evals_per_epoch": 1, "patience": 3, "min_rows": 0}, torch_threads=1,
                          use_distributor=False, **kw)


def fit(architecture: str, weighting: str, tasks: tuple[str, ...] = ("easy", "tier"), epochs: int = 6):  # noqa: ANN201
    s = spec(architecture, tasks)
    cfg = training(weighting, epochs=epochs)
    data = {"train": TensorBatches(planted(1200, 0), cfg.batch_size, shuffle=True, seed=0),
            "valid": TensorBatches(planted(400, 1), 256, shuffle=False)}
    plan = TrainPlan(spec=s.to_dict(), training=cfg, train_files=(), valid_files=(), epochs=epochs, progress=False)
    result = train_process(plan, data=data)
    assert result is not None
    return s, result


@pytest.mark.parametrize("architecture", DESIGNS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_design_and_weighting_learns_the_planted_signal(architecture: str, weighting: str) -> None:
    s, result = fit(architecture, weighting)
    losses = [row["loss_easy"] for row in result.steps]
    assert np.mean(losses[-3:]) < losses[0] - 0.1, losses  # the loss falls
    model = result.model()
    test = metrics(s, predict(model, TensorBatches(planted(600, 2), 256, shuffle=False).batches()))
    assert test["easy_auc"] > 0.85, test
    assert test["tier_accuracy"] > 0.8, test
    assert result.selected["selection_score"] == pytest.approx(selection_score(s, result.validation_metrics))


def test_single_task_model_trains_only_its_task() -> None:
    s, result = fit("shared_bottom", "fixed", tasks=("easy",), epochs=3)
    model = result.model()
    assert set(model.towers) == {"easy"}
    out = model(planted(8, 3))
    assert "logit_tier" not in out and out["logit_easy"].shape == (8,)
    assert all("loss_tier" not in row for row in result.steps)


def test_the_stored_state_rebuilds_the_same_tabular_model() -> None:
    s, result = fit("ple", "uncertainty", epochs=1)
    again = model_from_state(result.state)
    batch = planted(16, 4)
    torch.testing.assert_close(result.model()(batch)["logit_tier"], again(batch)["logit_tier"])
    assert TabularSpec.from_dict(s.to_dict()) == s


def test_a_dense_value_enters_as_its_piecewise_linear_encoding_over_the_bin_edges() -> None:
    enc = {**encoding(n_cat=0), "bins": 4, "edges": [[-1.0, 0.0, 1.0], [5.0]]}  # d1: one edge, no piece
    model = TabularModel(TabularSpec(name="toy", encoding=enc, tasks=("easy",), bottom_hidden=(), tower_hidden=()))
    dense = torch.tensor([[-2.0, 7.0], [-0.5, 7.0], [0.5, 7.0], [3.0, 7.0]])
    x = model.embed(torch.zeros((4, 0), dtype=torch.int64), dense)
    assert x.shape == (4, 4)  # the two values, then d0's two pieces
    torch.testing.assert_close(x[:, :2], dense)
    torch.testing.assert_close(x[:, 2:], torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.5], [1.0, 1.0]]))


@pytest.mark.parametrize("bins", [False, True])
def test_bins_let_a_linear_model_learn_a_non_monotone_dense_effect(bins: bool) -> None:
    """easy = |d0| < 0.6: a linear model of d0 cannot rank it (AUC about 0.5); over bin edges it can."""
    def data(n: int, seed: int) -> dict[str, torch.Tensor]:
        d = torch.as_tensor(np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32))
        labels = torch.stack([(d[:, 0].abs() < 0.6).long(), torch.zeros(n, dtype=torch.long)], dim=1)
        return {"cat": torch.zeros((n, 0), dtype=torch.int64), "dense": d, "labels": labels}

    enc = encoding(n_cat=0)  # as written before dense bins existed: no "bins", no "edges"
    if bins:
        enc.update(bins=12, edges=[np.linspace(-3, 3, 13).tolist()] * 2)
    s = TabularSpec(name="toy", encoding=enc, tasks=("easy",), dropout=0.0, bottom_hidden=(), tower_hidden=())
    cfg = training(epochs=8)
    plan = TrainPlan(spec=s.to_dict(), training=cfg, train_files=(), valid_files=(), epochs=8, progress=False)
    result = train_process(plan, data={"train": TensorBatches(data(2000, 0), 64, shuffle=True, seed=0),
                                       "valid": TensorBatches(data(500, 1), 256, shuffle=False)})
    assert result is not None
    auc = metrics(s, predict(result.model(), TensorBatches(data(1000, 2), 256, shuffle=False).batches()))["easy_auc"]
    assert (auc > 0.9) if bins else (auc < 0.65), auc


def test_gradnorm_weights_of_tabular_tasks_sum_to_their_count_and_favour_the_slower_task() -> None:
    """'tier' (3 classes from one column) is learnt fast, 'easy' (an xor) slowly: GradNorm raises 'easy'."""
    torch.manual_seed(0)
    s = spec("shared_bottom")
    work = TabularWorkload(s)
    model = work.build()
    cfg = training("gradnorm")
    weighting = build_weighting(cfg.weighting, s.loss_names, model.shared_parameters(), work.known_losses)
    task = TrainTask(model, weighting, cfg, s.loss_names, losses=work.losses, counts=work.counts)
    data = TensorBatches(planted(1200, 0), 64, shuffle=True, seed=0)
    for epoch in range(2):
        for batch in data.batches(epoch):
            stats = task.step(batch)
            assert stats["weight_easy"] + stats["weight_tier"] == pytest.approx(2.0, abs=1e-4)
    assert weighting.weights()["easy"] > 1.0 > weighting.weights()["tier"], weighting.weights()


def test_a_weighting_rejects_a_task_the_model_does_not_have() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_weighting(WeightingConfig(kind="fixed"), ["easy", "typo"], known=("easy", "tier"))


def test_the_permutation_split_is_reproducible_from_its_seed() -> None:
    a, b = permutation_splits(1000, 2026, 0.2, 0.1), permutation_splits(1000, 2026, 0.2, 0.1)
    np.testing.assert_array_equal(a, b)
    assert (a == 2).sum() == 200 and (a == 1).sum() == 100 and (a == 0).sum() == 700
    perm = np.random.default_rng(2026).permutation(1000)
    assert set(np.flatnonzero(a == 2)) == set(perm[:200].tolist())  # test = the permutation's first rows
    assert set(np.flatnonzero(a == 1)) == set(perm[200:300].tolist())
    assert not np.array_equal(a, permutation_splits(1000, 2027, 0.2, 0.1))


def predictions(labels: np.ndarray, quality: float, seed: int) -> TabularPredictions:
    rng = np.random.default_rng(seed)
    score = quality * labels + rng.normal(size=len(labels))
    probs = 1 / (1 + np.exp(-score))
    tier = np.eye(3)[labels % 3] * quality + rng.random((len(labels), 3))
    return TabularPredictions({"easy": labels, "tier": labels % 3}, {"easy": probs, "tier": tier})


def test_the_bootstrap_gate_promotes_a_clearly_better_model_and_blocks_a_clearly_worse_one() -> None:
    from core.config import PromotionConfig
    from registry.models import decide_tabular_promotion

    labels = np.random.default_rng(0).integers(0, 2, 3000)
    good, bad = predictions(labels, 3.0, 1), predictions(labels, 0.3, 2)
    s = spec()
    cfg = PromotionConfig(resamples=100)
    up = decide_tabular_promotion(good, bad, s, cfg)
    down = decide_tabular_promotion(bad, good, s, cfg)
    assert up.promote and not down.promote, (up.describe(), down.describe())
    assert "easy_auc" in down.describe() and "[" in down.describe()  # the intervals are in its line
    same = decide_tabular_promotion(good, predictions(labels, 3.0, 1), s, cfg)
    assert same.promote
    intervals = {i.metric: i for i in bootstrap(good, bad, s, resamples=100)}
    assert intervals["easy_auc"].low > 0 and intervals["tier_accuracy"].low > 0
    assert not math.isnan(intervals["easy_auc"].delta)
    assert decide_tabular_promotion(good, None, s, cfg).promote
