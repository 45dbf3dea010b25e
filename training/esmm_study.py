"""ESMM's claim on the demo world (issue 11): the objectives of three ways to estimate post-click
conversion (CVR), trained on the same DUPN network and the same examples.

* **ESMM** (Ma et al., SIGIR 2018): the platform's own objective (:mod:`training.losses`): ``ctr`` on
  every impression slot and ``ctcvr`` = BCE(p_ctr · p_cvr, buy) on every impression slot; the CVR head
  is never trained on clicked impressions alone. pCVR = sigmoid(cvr_logit), pCTCVR = pCTR · pCVR.
* **SSB baseline** (the sample-selection-bias model ESMM argues against): ``ctr`` plus
  ``cvr_clicked`` = BCE(cvr_logit, buy) over the **clicked** impression slots only. pCVR =
  sigmoid(cvr_logit), pCTCVR = pCTR · pCVR (what :func:`training.evaluation.predict` computes).
* **DIVISION**: two networks trained apart, a CTR model (``ctr``) and a CTCVR model whose
  ``ctr_logit`` is trained directly on the buy label of every impression slot (``ctcvr_direct``);
  pCTCVR = the CTCVR model's probability, pCVR = pCTCVR / pCTR clipped to [0, 1]
  (:func:`division_predictions`).

Each network is selected on the validation AUCs of the labels its objective trains on
(:attr:`StudyWorkload.selection_metrics`): ESMM on the mean of CTR and CTCVR AUC (what the platform's
:func:`training.evaluation.selection_score` gives a CTR-only model), the SSB baseline on the mean of CTR
and CVR AUC, DIVISION's CTR model on CTR AUC and its CTCVR model on CTCVR AUC. The test split is scored
once per run, with the selected weights.

No MLflow and no jobs here: ``benchmarks/bench_esmm.py`` runs the study and writes its table.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainingConfig
from training import evaluation as ev
from training.data import Batch, TensorBatches
from training.datasets import TrainingData
from training.experiment import RunOutcome
from training.losses import LOSS_NAMES, weighted_mean, example_weights, row_counts, task_losses
from training.model import TaskModel, unwrap
from training.spec import ModelSpec
from training.trainer import DUPNWorkload, TrainPlan, TrainResult, train_process

logger = logging.getLogger(__name__)

SSB_CVR = "cvr_clicked"
DIRECT_CTCVR = "ctcvr_direct"
MODELS = ("esmm", "ssb", "division")
LABELS = {"esmm": "ESMM (ctr + ctcvr losses)", "ssb": "SSB baseline (ctr + CVR on clicked impressions only)",
          "division": "DIVISION (CTR model, CTCVR model; pCVR = pCTCVR / pCTR)"}


# ====================================================================== the study's losses
def clicked_weights(batch: Mapping[str, Tensor]) -> Tensor:
    """(B, G) weights of the SSB baseline's CVR examples: the impression slots' ``ctr_weight`` where the
    slot was clicked; 0 on unclicked, padding and non-impression slots."""
    return example_weights(batch, "ctr") * (batch["label_click"] > 0.5)


def impression_weights(batch: Mapping[str, Tensor]) -> Tensor:
    """(B, G) weights of every impression slot (the ``ctr`` loss's: ``ctr_weight``, 0 on padding)."""
    return example_weights(batch, "ctr")


def ssb_cvr_values(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
    """(B, G) BCE(cvr_logit, label_buy): the SSB baseline's CVR loss before its clicked-only weights."""
    if "cvr_logit" not in outputs:
        raise KeyError("the SSB baseline's CVR loss needs the CVR head; build the model with model.esmm = true")
    return F.binary_cross_entropy_with_logits(outputs["cvr_logit"], batch["label_buy"].float(), reduction="none")


def direct_ctcvr_values(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
    """(B, G) BCE(ctr_logit, label_buy): DIVISION's CTCVR model predicts p(click and buy) with its CTR head."""
    return F.binary_cross_entropy_with_logits(outputs["ctr_logit"], batch["label_buy"].float(), reduction="none")


@dataclass(frozen=True)
class SlotLoss:
    """A loss over impression slots: its element-wise values (B, G) and its example weights (B, G)."""

    values: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
    weights: Callable[[Mapping[str, Tensor]], Tensor]


STUDY_LOSSES: dict[str, SlotLoss] = {SSB_CVR: SlotLoss(ssb_cvr_values, clicked_weights),
                                     DIRECT_CTCVR: SlotLoss(direct_ctcvr_values, impression_weights)}


def study_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], names: Iterable[str]) \
        -> dict[str, Tensor]:
    """Scalar loss per name: the platform's (:func:`training.losses.task_losses`) and the study's
    (:data:`STUDY_LOSSES`: weighted means over their own examples, 0 with a graph when a batch has none)."""
    wanted = tuple(names)
    out = task_losses(outputs, batch, [n for n in wanted if n not in STUDY_LOSSES])
    for name in wanted:
        if name in STUDY_LOSSES:
            loss = STUDY_LOSSES[name]
            out[name] = weighted_mean(loss.values(outputs, batch), loss.weights(batch))
    return out


def study_counts(batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]:
    """Examples each loss is computed on in this batch."""
    wanted = tuple(names)
    out = row_counts(batch, [n for n in wanted if n not in STUDY_LOSSES])
    for name in wanted:
        if name in STUDY_LOSSES:
            out[name] = int((STUDY_LOSSES[name].weights(batch) > 0).sum())
    return out


# ====================================================================== workloads
class StudyWorkload(DUPNWorkload):
    """The DUPN network of ``spec`` trained on ``loss_names`` (platform and study losses) and selected on the
    mean of the validation ``selection_metrics`` it has. The attention analysis is left out (not studied).

    Args:
        spec: the model (its tasks must be ``("ctr",)``: the study is about the impression heads).
        loss_names: the losses of the objective.
        selection_metrics: validation metrics whose mean selects the weights.
    """

    known_losses: tuple[str, ...] = LOSS_NAMES + tuple(STUDY_LOSSES)

    def __init__(self, spec: ModelSpec, loss_names: Sequence[str], selection_metrics: Sequence[str]) -> None:
        super().__init__(spec)
        if spec.tasks != ("ctr",) or not spec.esmm:
            raise ValueError(f"the ESMM study trains CTR-only models with the CVR head (tasks ['ctr'], "
                             f"model.esmm=true), got tasks {list(spec.tasks)}, esmm {spec.model.esmm}")
        unknown = [n for n in loss_names if n not in self.known_losses]
        if unknown or not loss_names:
            raise ValueError(f"unknown or no losses {list(loss_names)}; known: {list(self.known_losses)}")
        self.loss_names = tuple(loss_names)
        self.selection_metrics = tuple(selection_metrics)

    def losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], names: Iterable[str]) \
            -> dict[str, Tensor]:
        return study_losses(outputs, batch, names)

    def counts(self, batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]:
        return study_counts(batch, names)

    def examples(self, batch: Batch) -> int:
        """Impression slots: every objective of the study learns from the same examples."""
        return row_counts(batch, ["ctr"])["ctr"]

    def selection_score(self, values: Mapping[str, float], cfg: TrainingConfig) -> float:
        return ev.finite_mean(values, self.selection_metrics)

    def analyse(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """No attention analysis in this study."""

    def report(self, result: TrainResult) -> None:
        """Nothing to add to the result."""


class DirectCTCVRWorkload(StudyWorkload):
    """DIVISION's CTCVR model: its ``ctr_logit`` trained on the buy label of every impression slot, scored by
    the AUC of its probability against the buy label (``ctcvr_auc``)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, (DIRECT_CTCVR,), ("ctcvr_auc",))

    def score(self, model: nn.Module, batches: Iterable[Batch], analyse: bool = False) -> dict[str, float]:
        c = ev.predict(unwrap(model), batches).ctr
        if not c:
            return {"ctr_rows": 0.0, "ctcvr_auc": math.nan}
        return {"ctr_rows": float(len(c["buy"])), "ctcvr_auc": ev.auc(c["buy"], c["prob"], "ctcvr_auc")}


def esmm_workload(spec: ModelSpec) -> StudyWorkload:
    """ESMM: the platform's ``ctr`` + ``ctcvr`` objective, selected on CTR and CTCVR AUC."""
    return StudyWorkload(spec, ("ctr", "ctcvr"), ("ctr_auc", "ctcvr_auc"))


def ssb_workload(spec: ModelSpec) -> StudyWorkload:
    """The SSB baseline: ``ctr`` + CVR on clicked impressions only, selected on CTR and CVR AUC."""
    return StudyWorkload(spec, ("ctr", SSB_CVR), ("ctr_auc", "cvr_auc"))


def division_ctr_workload(spec: ModelSpec) -> StudyWorkload:
    """DIVISION's CTR model: ``ctr`` alone, selected on CTR AUC."""
    return StudyWorkload(spec, ("ctr",), ("ctr_auc",))


# ====================================================================== DIVISION's predictions
def division_cvr(p_ctcvr: np.ndarray, p_ctr: np.ndarray) -> np.ndarray:
    """pCVR = pCTCVR / pCTR clipped to [0, 1] (0 where pCTR is 0)."""
    num = np.asarray(p_ctcvr, dtype=np.float64)
    den = np.asarray(p_ctr, dtype=np.float64)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.clip(ratio, 0.0, 1.0)


def division_predictions(ctr: ev.Predictions, ctcvr: ev.Predictions) -> ev.Predictions:
    """DIVISION's predictions of one split from its two models' predictions of the same examples in the same
    order: ``prob`` of the CTR model, ``ctcvr_prob`` of the CTCVR model, ``cvr_prob`` their clipped ratio.

    Raises:
        ValueError: the two predictions are not of the same examples (labels or users differ).
    """
    a, b = ctr.ctr, ctcvr.ctr
    same = all(k in a and k in b and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
               for k in ("click", "buy", "user"))
    if not same:
        raise ValueError("DIVISION needs both models' predictions of the same examples in the same order; "
                         "predict both from one in-order reading of the split")
    cols = {k: a[k] for k in ("prob", "click", "buy", "user")}
    cols["ctcvr_prob"] = np.asarray(b["prob"])
    cols["cvr_prob"] = division_cvr(b["prob"], a["prob"])
    return ev.Predictions(ctr=cols)


# ====================================================================== runs
@dataclass(frozen=True)
class StudySplits:
    """The splits every run reads, held in memory once: the same examples for every model and seed (the
    training split is reshuffled per seed, :meth:`train`; validation and test keep one order)."""

    train_rows: TensorBatches
    valid: TensorBatches
    test: TensorBatches

    def train(self, cfg: TrainingConfig) -> TensorBatches:
        """The training split shuffled with ``cfg.seed`` into ``cfg.batch_size`` batches."""
        return TensorBatches(self.train_rows.tensors, cfg.batch_size, shuffle=True, seed=cfg.seed,
                             bucket_by_length=cfg.bucket_by_length)


def fit(work: StudyWorkload, training: TrainingConfig, data: TrainingData, splits: StudySplits, seed: int,
        progress: bool = False) -> TrainResult:
    """Train ``work``'s network with ``training`` (its seed replaced by ``seed``), selecting on validation."""
    cfg = training.model_copy(update={"seed": seed})
    plan = TrainPlan(spec=work.spec.to_dict(), training=cfg, train_files=data.train_files,
                     valid_files=data.valid_files, epochs=cfg.epochs, select=True,
                     max_steps_per_epoch=cfg.max_steps_per_epoch, progress=progress)
    result = train_process(plan, {"train": splits.train(cfg), "valid": splits.valid}, work=work)
    if result is None:
        raise RuntimeError("training returned no result")
    return result


def _selection(result: TrainResult) -> dict[str, float | bool]:
    """Where selection stopped: the chosen epoch fraction and whether it was the last scoring (at the cap)."""
    last = max((e.get("step", -1.0) for e in result.evals), default=-1.0)
    step = float(result.selected.get("step", math.nan))
    return {"selected_epoch": float(result.selected.get("epoch_fraction", math.nan)), "selected_step": step,
            "at_cap": bool(result.evals) and step == last, "train_seconds": result.train_seconds}


def _outcome(name: str, seed: int, test: dict[str, float], valid: dict[str, float],
             parts: Mapping[str, tuple[TrainResult, TaskModel]], extra: Mapping[str, object] | None = None) \
        -> RunOutcome:
    results = [r for r, _ in parts.values()]
    one = results[0] if len(results) == 1 else None
    return RunOutcome(
        name=name, seed=seed, test=test, valid=valid,
        selected_step=float(one.selected.get("step", math.nan)) if one else math.nan,
        selected_epoch=float(one.selected.get("epoch_fraction", math.nan)) if one else math.nan,
        evals=one.evals if one else [], train_seconds=sum(r.train_seconds for r in results),
        train_samples=sum(r.train_samples for r in results), train_rows=sum(r.train_rows for r in results),
        stopped_early=all(r.stopped_early for r in results),
        parameters=sum(sum(p.numel() for p in m.parameters()) for _, m in parts.values()),
        extra={"parts": {k: _selection(r) for k, (r, _) in parts.items()}, **dict(extra or {})})


def run_seed(spec: ModelSpec, training: TrainingConfig, data: TrainingData, splits: StudySplits, seed: int,
             models: Sequence[str] = MODELS, progress: bool = False) -> dict[str, RunOutcome]:
    """Train and test every model of the study (:data:`MODELS`) with one seed.

    Returns:
        model name -> its outcome: test metrics of the selected weights (``cvr_auc`` over clicked test
        impressions, ``ctcvr_auc`` and ``ctr_auc`` over all of them), validation metrics, cost.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown study models {unknown}; choose from {list(MODELS)}")
    out: dict[str, RunOutcome] = {}
    single = {"esmm": esmm_workload, "ssb": ssb_workload}
    for name in models:
        if name in single:
            result = fit(single[name](spec), training, data, splits, seed, progress)
            model = result.model()
            test = ev.metrics(ev.predict(model, splits.test.batches()))
            out[name] = _outcome(name, seed, test, result.validation_metrics, {name: (result, model)})
        else:
            parts: dict[str, tuple[TrainResult, TaskModel]] = {}
            for part, work in (("ctr", division_ctr_workload(spec)), ("ctcvr", DirectCTCVRWorkload(spec))):
                result = fit(work, training, data, splits, seed, progress)
                parts[part] = (result, result.model())
            pred = division_predictions(ev.predict(parts["ctr"][1], splits.test.batches()),
                                        ev.predict(parts["ctcvr"][1], splits.test.batches()))
            test = ev.metrics(pred)
            valid = {"ctr_auc": parts["ctr"][0].validation_metrics.get("ctr_auc", math.nan),
                     "ctcvr_auc": parts["ctcvr"][0].validation_metrics.get("ctcvr_auc", math.nan)}
            c = pred.ctr
            clipped = float(np.mean(c["ctcvr_prob"] > c["prob"])) if len(c["prob"]) else math.nan
            out[name] = _outcome(name, seed, test, valid, parts, {"test_share_clipped": clipped})
        logger.info("%s seed %d: test %s", name, seed,
                    {k: round(out[name].test.get(k, math.nan), 4) for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")})
    return out
