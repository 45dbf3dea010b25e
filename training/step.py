"""The optimisation step, apart from the model: losses, task weighting and the optimiser.

:class:`TrainTask` is what a training loop (single process or one DDP rank) drives:
``step(batch)`` for training (evaluation: :func:`training.evaluation.predict`). The model may be wrapped in
DistributedDataParallel; the weighting's own parameters are then averaged across processes
by this class (the model's gradients are averaged by DDP).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.config import LRScheduleConfig, TrainingConfig
from training.losses import row_counts, task_losses
from training.model import unwrap
from training.weighting import TaskWeighting

logger = logging.getLogger(__name__)

LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Iterable[str]], dict[str, Tensor]]
CountFn = Callable[[Mapping[str, Tensor], Iterable[str]], dict[str, int]]


def prepare_torch(threads: int) -> None:
    """Set this process's torch threads, and have the CPU flush denormal floats to zero.

    With weight decay, the gradient of an embedding row no batch touches is the decay itself, so Adam
    drives the row and its moments towards zero, and after about 1,200 steps many of them are denormal
    (below 1.2e-38), where every element-wise operation on them runs many times slower on x86: the
    demo's full training ran its third epoch at half the speed of its first two (docs/training.md).
    Flushing changes only values below 1.2e-38, to zero.
    """
    torch.set_num_threads(threads)
    if not torch.set_flush_denormal(True):
        logger.info("this CPU cannot flush denormal floats to zero: steps may slow down once Adam's moments of "
                    "unused embedding rows decay below 1.2e-38")


def build_optimizer(model_params: Iterable[nn.Parameter], cfg: TrainingConfig,
                    extra_params: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The configured optimiser (adagrad / adam / sgd at ``cfg.lr``).

    ``cfg.weight_decay`` is an L2 penalty on the model parameters; ``extra_params`` (the task
    weighting's, e.g. uncertainty log-variances) are trained without it.
    """
    groups: list[dict[str, object]] = [{"params": list(model_params), "weight_decay": cfg.weight_decay}]
    if extra_params:
        groups.append({"params": list(extra_params), "weight_decay": 0.0})
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adagrad, adam or sgd")


def lr_factor(schedule: LRScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The share of ``lr`` that ``schedule`` gives the optimiser step after ``step`` steps, in a run of at
    most ``epochs`` epochs of ``steps_per_epoch`` steps (``training.lr_schedule``)."""
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    span_epochs = min(schedule.epochs, epochs) if schedule.epochs is not None else epochs
    span = max(1, round(span_epochs * steps_per_epoch) - schedule.warmup_steps)
    done = min(1.0, (step - schedule.warmup_steps) / span)
    shape = 1.0 - done if schedule.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
    return schedule.final_fraction + (1.0 - schedule.final_fraction) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRScheduleConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``optimizer``'s learning rates (every parameter group's) scaled by :func:`lr_factor`; call its
    ``step()`` after each optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, steps_per_epoch, epochs))


def _average_across_processes(params: Sequence[nn.Parameter]) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


class TrainTask:
    """Model + task weighting + optimiser: one object per training run.

    Args:
        model: a :class:`training.model.TaskModel`, possibly DDP-wrapped.
        weighting: how the per-task losses are combined (:mod:`training.weighting`).
        cfg: optimiser, learning rate and weight decay.
        loss_names: losses to train on; default the model spec's ``loss_names``.
        max_grad_norm: clip the global gradient norm to this (None = no clipping).
        losses: ``(outputs, batch, names) -> {name: scalar loss}`` (DUPN's by default).
        counts: ``(batch, names) -> {name: rows holding that task}`` (DUPN's by default).
    """

    def __init__(self, model: nn.Module, weighting: TaskWeighting, cfg: TrainingConfig,
                 loss_names: Sequence[str] | None = None, max_grad_norm: float | None = None,
                 losses: LossFn = task_losses, counts: CountFn = row_counts) -> None:
        self.model = model
        self.weighting = weighting
        self.losses, self.counts = losses, counts
        self.loss_names = tuple(loss_names) if loss_names is not None else unwrap(model).spec.loss_names
        missing = [t for t in weighting.task_names if t not in self.loss_names]
        if missing:
            raise ValueError(f"the weighting covers tasks {missing} that are not trained ({self.loss_names})")
        self.optimizer = build_optimizer(model.parameters(), cfg, weighting.main_parameters())
        self.max_grad_norm = max_grad_norm
        self.steps = 0

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimisation step on a mixed-task batch.

        Returns:
            ``loss`` (the weighted total), ``loss_<task>``, ``weight_<task>`` and ``rows_<task>``.

        Raises:
            FloatingPointError: the loss is not finite (the step is not applied).
        """
        self.model.train()
        self.weighting.train()
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(batch)
        losses = self.losses(outputs, batch, self.loss_names)
        counts = self.counts(batch, self.loss_names)
        extra = self.extra_losses(outputs, batch)
        total = self.weighting.combine(losses, counts)
        for value in extra.values():
            total = total + value
        if not bool(torch.isfinite(total.detach())):
            values = {t: float(v.detach()) for t, v in losses.items()}
            raise FloatingPointError(f"non-finite loss at step {self.steps}: total {float(total.detach())}, "
                                     f"per task {values}; lower training.lr or check the inputs for NaN")
        weights_used = self.weighting.weights()
        self.weighting.before_backward(losses, counts)
        total.backward()
        _average_across_processes(self.weighting.main_parameters())
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        out = {"loss": float(total.detach())}
        for t in self.loss_names:
            out[f"loss_{t}"] = float(losses[t].detach())
            out[f"rows_{t}"] = float(counts[t])
        for t, w in weights_used.items():
            out[f"weight_{t}"] = w
        for name, value in extra.items():
            out[f"loss_{name}"] = float(value.detach())
        return out

    def extra_losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Losses added to the weighted total as they are (none here; a subclass adds e.g. a new
        task's loss next to the original ones). Reported as ``loss_<name>``."""
        return {}


# ---------------------------------------------------------------------- attention analysis
def attention_by_property(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], n_behavior: int,
                          n_time_buckets: int, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention weight per (behaviour type, time bucket) cell over the valid positions of a batch.

    Args:
        outputs: model outputs with ``attention`` (B, L).
        batch: with ``seq_behavior``, ``seq_time_bucket`` (B, L) and ``seq_len`` (B,).
        n_behavior, n_time_buckets: vocabulary sizes (``spec.vocab["behavior"]``, ``["time_bucket"]``).
        relative: multiply each weight by its sequence length, so 1.0 means "as much as a
            uniform attention would give" (comparable across sequence lengths).

    Returns:
        (mean weight (n_behavior, n_time_buckets), NaN where no position falls;
        counts (n_behavior, n_time_buckets) int64).
    """
    acc = AttentionByProperty(n_behavior, n_time_buckets, relative)
    acc.update(outputs, batch)
    return acc.result()


class AttentionByProperty:
    """Accumulates :func:`attention_by_property` over many batches (the paper's attention analysis)."""

    def __init__(self, n_behavior: int, n_time_buckets: int, relative: bool = False) -> None:
        self.shape = (n_behavior, n_time_buckets)
        self.relative = relative
        self.sums = np.zeros(self.shape, dtype=np.float64)
        self.counts = np.zeros(self.shape, dtype=np.int64)

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        weights = outputs["attention"].detach().double().cpu()
        seq_len = batch["seq_len"].cpu()
        positions = torch.arange(weights.shape[1])
        valid = positions.unsqueeze(0) < seq_len.clamp(0, weights.shape[1]).unsqueeze(1)
        if self.relative:
            weights = weights * seq_len.clamp(min=1).unsqueeze(1).double()
        behavior = batch["seq_behavior"].cpu().long()
        bucket = batch["seq_time_bucket"].cpu().long()
        if int(behavior.max()) >= self.shape[0] or int(bucket.max()) >= self.shape[1]:
            raise ValueError(f"behaviour / time-bucket index beyond the grid {self.shape}; "
                             "pass the spec's vocab sizes")
        cell = (behavior * self.shape[1] + bucket)[valid].numpy()
        size = self.shape[0] * self.shape[1]
        self.sums += np.bincount(cell, weights=weights[valid].numpy(), minlength=size).reshape(self.shape)
        self.counts += np.bincount(cell, minlength=size).reshape(self.shape)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean weight per cell, NaN where empty; counts per cell)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), math.nan)
        return mean, self.counts.copy()
