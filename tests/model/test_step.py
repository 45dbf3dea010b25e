"""The optimisation step object, predictions for evaluation and the attention analysis."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch

from core.config import TrainingConfig, WeightingConfig
from training.metrics import evaluate
from training.model import build_model, last_shared_layer
from training.spec import ModelSpec
from training.step import AttentionByProperty, TrainTask, attention_by_property, label_arrays
from training.weighting import build_weighting

Batch = dict[str, torch.Tensor]


@pytest.mark.parametrize("kind,optimizer", [("fixed", "sgd"), ("uncertainty", "adam"), ("gradnorm", "adagrad")])
def test_train_task_steps_and_predicts(make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
                                       kind: str, optimizer: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(architecture="cgc")
    model = build_model(spec)
    cfg = TrainingConfig(optimizer=optimizer, lr=0.05, weight_decay=1e-4, weighting=WeightingConfig(kind=kind))
    weighting = build_weighting(cfg.weighting, spec.loss_names, last_shared_layer(model))
    task = TrainTask(model, weighting, cfg)
    batch = make_batch(n=40, seed=1)
    first = task.step(batch)
    for _ in range(10):
        last = task.step(batch)
    assert last["loss_ctr"] < first["loss_ctr"]
    assert {f"weight_{t}" for t in spec.loss_names} <= set(last)
    assert last["rows_ppp"] == 10.0
    if kind == "gradnorm":
        assert sum(last[f"weight_{t}"] for t in spec.loss_names) == pytest.approx(len(spec.loss_names))
    if kind == "uncertainty":
        assert any(p is weighting.main_parameters()[0] for g in task.optimizer.param_groups for p in g["params"])
    preds = task.predict(batch)
    assert {"ctr_prob", "ctcvr_prob", "l2r_score", "follow_prob", "ppp_probs", "attention"} <= set(preds)
    assert preds["ppp_probs"].shape == (40, 7)
    metrics = evaluate(preds, label_arrays(batch))
    assert 0.0 <= metrics["ctr_auc"] <= 1.0 and not math.isnan(metrics["l2r_ndcg10"])


def test_non_finite_loss_is_reported(make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch]) -> None:
    spec = make_spec()
    model = build_model(spec)
    cfg = TrainingConfig(weighting=WeightingConfig(kind="fixed"))
    task = TrainTask(model, build_weighting(cfg.weighting, spec.loss_names), cfg)
    batch = make_batch(n=8)
    batch["rank_features"] = torch.full_like(batch["rank_features"], float("nan"))
    with pytest.raises(FloatingPointError, match="l2r"):
        task.step(batch)


def test_attention_by_property_averages_per_cell() -> None:
    outputs = {"attention": torch.tensor([[0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0]])}
    batch = {
        "seq_len": torch.tensor([3, 1]),
        "seq_behavior": torch.tensor([[2, 2, 3, 0], [2, 5, 5, 5]]),
        "seq_time_bucket": torch.tensor([[1, 1, 2, 0], [2, 1, 1, 1]]),  # row 2's tail is padding
    }
    mean, counts = attention_by_property(outputs, batch, n_behavior=6, n_time_buckets=4)
    assert counts.sum() == 4 and counts[2, 1] == 2 and counts[3, 2] == 1 and counts[2, 2] == 1
    assert mean[2, 1] == pytest.approx(0.4) and mean[3, 2] == pytest.approx(0.2) and mean[2, 2] == 1.0
    assert np.isnan(mean[5, 1])  # padding never counted
    acc = AttentionByProperty(6, 4, relative=True)
    acc.update(outputs, batch)
    acc.update(outputs, batch)
    rel, rel_counts = acc.result()
    assert rel_counts[2, 1] == 4 and rel[2, 1] == pytest.approx(1.2)  # 0.4 * seq_len 3
