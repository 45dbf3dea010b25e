"""The optimisation step object, evaluation predictions of a trained batch and the attention analysis."""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import pytest
import torch

from core.config import TrainingConfig, WeightingConfig
from core.tables import KIND_IDS
from training.evaluation import metrics, predict
from training.losses import task_losses
from training.model import build_model, last_shared_layer
from training.spec import ModelSpec
from training.step import AttentionByProperty, TrainTask, attention_by_property
from training.weighting import FixedWeighting, build_weighting

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
    real = torch.arange(4).unsqueeze(0) < batch["n_items"].unsqueeze(1)
    ppp_rows = int((batch["kind_id"] == KIND_IDS["ppp"]).sum())
    assert last["rows_ppp"] == ppp_rows == 13 and last["rows_follow"] == 13.0
    assert last["rows_ctr"] == float(real.sum()) and last["rows_l2r"] == float((real & (batch["l2r"] == 1)
                                                                                .unsqueeze(1)).sum())
    if kind == "gradnorm":
        assert sum(last[f"weight_{t}"] for t in spec.loss_names) == pytest.approx(len(spec.loss_names))
    if kind == "uncertainty":
        assert any(p is weighting.main_parameters()[0] for g in task.optimizer.param_groups for p in g["params"])
    if kind == "fixed":
        assert all(last[f"weight_{t}"] == 1.0 for t in spec.loss_names)
        assert last["loss"] == pytest.approx(sum(last[f"loss_{t}"] for t in spec.loss_names), rel=1e-5)
    pred = predict(model, [batch])
    assert pred.rows() == {"ctr": int(real.sum()), "l2r": int(last["rows_l2r"]), "follow": 13, "ppp": ppp_rows}
    assert pred.ppp["probs"].shape == (ppp_rows, 7) and {"cvr_prob", "ctcvr_prob"} <= set(pred.ctr)
    scores = metrics(pred)
    assert 0.0 <= scores["ctr_auc"] <= 1.0 and not math.isnan(scores["l2r_ndcg10"])
    assert scores["ppp_rows_seen"] == ppp_rows and math.isnan(scores["ppp_accuracy"])  # every user trained


def test_extra_losses_are_added_to_the_weighted_total(make_spec: Callable[..., ModelSpec],
                                                      make_batch: Callable[..., Batch]) -> None:
    class WithExtra(TrainTask):
        def extra_losses(self, outputs: Mapping[str, torch.Tensor],
                         batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"norm": outputs["representation"].pow(2).mean()}

    torch.manual_seed(0)
    spec = make_spec(tasks=("ctr", "ppp"))
    model = build_model(spec).eval()
    batch = make_batch(n=12, seed=2)
    with torch.no_grad():
        out = model(batch)
        losses = task_losses(out, batch, spec.loss_names)
        expected = 2.0 * float(losses["ctr"]) + float(losses["ctcvr"]) + float(losses["ppp"]) \
            + float(out["representation"].pow(2).mean())
    task = WithExtra(model, FixedWeighting(spec.loss_names, {"ctr": 2.0}), TrainingConfig(optimizer="sgd"))
    stats = task.step(batch)
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["loss_norm"] == pytest.approx(float(out["representation"].pow(2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="not trained"):
        TrainTask(model, FixedWeighting(["ctr", "l2r"]), TrainingConfig(), loss_names=["ctr"])


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
