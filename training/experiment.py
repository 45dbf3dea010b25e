"""One comparison run under the evaluation protocol: train a model with selection on the validation
split, then score the test split once (what the comparison benchmark repeats per model and seed).

No MLflow and no jobs here: the benchmark logs the returned :class:`RunOutcome`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from core.config import TrainingConfig
from training import evaluation as ev
from training.datasets import TrainingData
from training.model import GateStats, attach_gate_stats
from training.spec import ModelSpec
from training.trainer import TrainPlan, TrainResult, Workload, eval_source, train_process

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """Metrics and cost of one model trained with one seed."""

    name: str
    seed: int
    test: dict[str, float]
    valid: dict[str, float]
    selected_step: float
    selected_epoch: float
    evals: list[dict[str, float]]
    train_seconds: float
    train_samples: int
    train_rows: int
    stopped_early: bool
    parameters: int
    gates: dict[str, list[float]] = field(default_factory=dict)
    collapsed_gates: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / max(self.train_seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_second"] = self.samples_per_second
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "RunOutcome":
        data = {k: v for k, v in data.items() if k != "samples_per_second"}
        return RunOutcome(**data)


def train_selected(spec: ModelSpec, training: TrainingConfig, data: TrainingData, progress: bool = True,
                   work: Workload | None = None) -> TrainResult:
    """Train ``spec`` with ``training`` on ``data``'s training split in this process, selecting its weights on
    the validation split (the test split is not read); ``work``: another workload than ``spec``'s own (e.g.
    :class:`training.side_inputs.SideWorkload`)."""
    plan = TrainPlan(spec=spec.to_dict(), training=training, train_files=data.train_files,
                     valid_files=data.valid_files, epochs=training.epochs, select=True,
                     max_steps_per_epoch=training.max_steps_per_epoch, progress=progress)
    result = train_process(plan, work=work)
    if result is None:
        raise RuntimeError("training returned no result")
    return result


def train_and_test(name: str, spec: ModelSpec, training: TrainingConfig, data: TrainingData, seed: int,
                   progress: bool = True, work: Workload | None = None) -> RunOutcome:
    """Train ``spec`` with ``training`` (its seed replaced by ``seed``) on ``data``'s training split,
    selecting on its validation split, and score its test split once with the selected weights.

    For mixture-of-experts designs the gate utilisation (mean weight per expert) is measured on
    the validation split. ``work``: the workload whose readers feed the model, when it is not ``spec``'s own
    (its batches carry inputs the plain readers do not).
    """
    cfg = training.model_copy(update={"seed": seed})
    started = time.perf_counter()
    result = train_selected(spec, cfg, data, progress, work)
    model = result.model()

    def source(files: tuple[str, ...]) -> Any:
        return work.eval_source(cfg, files) if work is not None else eval_source(cfg, files, spec.tasks)

    gates: dict[str, list[float]] = {}
    collapsed: list[str] = []
    if spec.model.architecture in ("mmoe", "cgc", "ple"):
        stats = GateStats()
        attach_gate_stats(model, stats)
        ev.predict(model, source(data.valid_files).batches())
        attach_gate_stats(model, None)
        gates, collapsed = stats.result(), stats.collapsed()
    test = ev.metrics(ev.predict(model, source(data.test_files).batches()))
    logger.info("%s seed %d: test %s (%.0fs)", name, seed,
                {k: round(v, 4) for k, v in test.items() if k in ev.REPORTED_METRICS}, time.perf_counter() - started)
    return RunOutcome(
        name=name, seed=seed, test=test, valid=result.validation_metrics,
        selected_step=float(result.selected.get("step", math.nan)),
        selected_epoch=float(result.selected.get("epoch_fraction", math.nan)), evals=result.evals,
        train_seconds=result.train_seconds, train_samples=result.train_samples, train_rows=result.train_rows,
        stopped_early=result.stopped_early, parameters=sum(p.numel() for p in model.parameters()),
        gates=gates, collapsed_gates=collapsed)
