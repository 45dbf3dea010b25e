"""The ESMM study's objectives (training/esmm_study.py): the SSB baseline's CVR loss reads clicked slots only,
DIVISION's pCVR is the clipped ratio, and every objective learns a tiny batch."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.config import TrainingConfig, WeightingConfig
from tests.model.conftest import G
from training import evaluation as ev
from training.data import TensorBatches
from training.esmm_study import (DIRECT_CTCVR, SSB_CVR, DirectCTCVRWorkload, StudyWorkload, division_ctr_workload,
                                 division_cvr, division_predictions, esmm_workload, ssb_workload, study_counts,
                                 study_losses)
from training.model import build_model, last_shared_layer
from training.spec import ModelSpec
from training.step import TrainTask
from training.trainer import TrainPlan, train_process
from training.weighting import build_weighting

Batch = dict[str, torch.Tensor]


def _outputs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"ctr_logit": torch.randn(n, G, generator=gen), "cvr_logit": torch.randn(n, G, generator=gen)}


def _real(batch: Batch) -> torch.Tensor:
    return torch.arange(G).unsqueeze(0) < batch["n_items"].unsqueeze(1)


def test_ssb_cvr_loss_ignores_unclicked_slots(make_batch: Callable[..., Batch]) -> None:
    batch = make_batch(n=30, seed=3)
    out = _outputs(30)
    real, clicked = _real(batch), batch["label_click"] > 0.5
    base = float(study_losses(out, batch, [SSB_CVR])[SSB_CVR])
    expected = F.binary_cross_entropy_with_logits(out["cvr_logit"][clicked], batch["label_buy"][clicked].float())
    assert base == pytest.approx(float(expected), rel=1e-6)
    assert study_counts(batch, [SSB_CVR])[SSB_CVR] == int((real & clicked).sum())
    unclicked = torch.nonzero(real & ~clicked)[0]
    flipped = {k: v.clone() for k, v in batch.items()}
    flipped["label_buy"][tuple(unclicked)] = 1.0
    assert float(study_losses(out, flipped, [SSB_CVR])[SSB_CVR]) == base
    hit = torch.nonzero(real & clicked)[0]  # the same change on a clicked slot moves the loss
    flipped["label_buy"][tuple(hit)] = 1.0 - flipped["label_buy"][tuple(hit)]
    assert float(study_losses(out, flipped, [SSB_CVR])[SSB_CVR]) != pytest.approx(base)


def test_direct_ctcvr_loss_is_bce_of_the_ctr_head_on_the_buy_label(make_batch: Callable[..., Batch]) -> None:
    batch = make_batch(n=30, seed=4)
    out = _outputs(30, seed=1)
    real = _real(batch)
    losses = study_losses(out, batch, ["ctr", DIRECT_CTCVR])
    expected = F.binary_cross_entropy_with_logits(out["ctr_logit"][real], batch["label_buy"][real].float())
    assert float(losses[DIRECT_CTCVR]) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses["ctr"]) != pytest.approx(float(losses[DIRECT_CTCVR]))  # other label, same slots
    assert study_counts(batch, ["ctr", DIRECT_CTCVR]) == {"ctr": int(real.sum()), DIRECT_CTCVR: int(real.sum())}


def test_division_cvr_is_the_clipped_ratio() -> None:
    p_ctcvr = np.array([0.1, 0.3, 0.0, 0.05, 0.2])
    p_ctr = np.array([0.2, 0.2, 0.0, 0.5, 0.2])
    np.testing.assert_allclose(division_cvr(p_ctcvr, p_ctr), [0.5, 1.0, 0.0, 0.1, 1.0])


def test_division_predictions_compose_the_two_models() -> None:
    labels = {"click": np.array([1, 1, 0, 1]), "buy": np.array([1, 0, 0, 0]), "user": np.array([1, 1, 2, 2])}
    ctr = ev.Predictions(ctr={"prob": np.array([0.5, 0.4, 0.1, 0.8]), **labels})
    ctcvr = ev.Predictions(ctr={"prob": np.array([0.4, 0.2, 0.01, 0.1]), **labels})
    pred = division_predictions(ctr, ctcvr)
    np.testing.assert_allclose(pred.ctr["cvr_prob"], [0.8, 0.5, 0.1, 0.125])
    np.testing.assert_array_equal(pred.ctr["ctcvr_prob"], ctcvr.ctr["prob"])
    scores = ev.metrics(pred)
    assert scores["cvr_auc"] == 1.0 and scores["ctcvr_auc"] == 1.0  # the buyer has the highest ratio
    other = ev.Predictions(ctr={**ctcvr.ctr, "user": np.array([1, 2, 1, 2])})
    with pytest.raises(ValueError, match="same examples"):
        division_predictions(ctr, other)


WORKLOADS: dict[str, Callable[[ModelSpec], StudyWorkload]] = {
    "esmm": esmm_workload, "ssb": ssb_workload, "division_ctr": division_ctr_workload,
    "division_ctcvr": DirectCTCVRWorkload}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_each_objective_learns_a_tiny_batch(make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
                                            name: str) -> None:
    torch.manual_seed(0)
    work = WORKLOADS[name](make_spec(tasks=("ctr",)))
    model = work.build()
    cfg = TrainingConfig(optimizer="adam", lr=0.01, weighting=WeightingConfig(kind="fixed"))
    weighting = build_weighting(cfg.weighting, work.loss_names, last_shared_layer(model), work.known_losses)
    task = TrainTask(model, weighting, cfg, work.loss_names, losses=work.losses, counts=work.counts)
    batch = make_batch(n=40, seed=1, kinds=[0] * 40)
    first = task.step(batch)
    for _ in range(15):
        last = task.step(batch)
    assert last["loss"] < 0.8 * first["loss"]
    assert all(last[f"rows_{n}"] > 0 for n in work.loss_names)


def test_study_workload_trains_selects_and_scores_in_process(make_spec: Callable[..., ModelSpec],
                                                             make_batch: Callable[..., Batch]) -> None:
    spec = make_spec(tasks=("ctr",))
    batch = make_batch(n=48, seed=2, kinds=[0] * 48)
    data = {"train": TensorBatches(batch, 16, seed=0), "valid": TensorBatches(batch, 48, shuffle=False)}
    cfg = TrainingConfig(optimizer="adam", lr=0.01, batch_size=16, torch_threads=1,
                         weighting=WeightingConfig(kind="uncertainty"))
    plan = TrainPlan(spec=spec.to_dict(), training=cfg, train_files=(), valid_files=(), epochs=2, progress=False)
    work = DirectCTCVRWorkload(spec)
    result = train_process(plan, data, work=work)
    assert result is not None and result.evals
    valid = result.validation_metrics
    assert set(valid) == {"ctr_rows", "ctcvr_auc"} and 0.0 <= valid["ctcvr_auc"] <= 1.0
    assert result.selected["selection_score"] == valid["ctcvr_auc"]
    ssb = ssb_workload(spec)
    assert ssb.selection_score({"ctr_auc": 0.7, "cvr_auc": 0.6, "ctcvr_auc": 0.1}, cfg) == pytest.approx(0.65)
    assert math.isnan(ssb.selection_score({"ctcvr_auc": 0.9}, cfg))
    with pytest.raises(ValueError, match="CTR-only"):
        ssb_workload(make_spec(tasks=("ctr", "follow")))
    with pytest.raises(ValueError, match="CTR-only"):
        esmm_workload(make_spec(tasks=("ctr",), esmm=False))
    assert build_model(spec).spec.loss_names == esmm_workload(spec).loss_names  # ESMM = the platform's objective
