"""The training run: one function per process, run directly or by Spark's TorchDistributor.

:func:`train_process` is what every process executes. With ``WORLD_SIZE > 1`` in its
environment (TorchDistributor / torchrun set it) it joins a gloo (CPU) or nccl (GPU) process
group, wraps the model in DistributedDataParallel and reads its own Petastorm shard; all
ranks stop an epoch together as soon as one shard is exhausted.

Model selection follows the evaluation protocol (:mod:`training.evaluation`): rank 0 scores
the **validation** split ``early_stopping.evals_per_epoch`` times per epoch, keeps the weights
of the best selection score, and all ranks stop after ``early_stopping.patience`` scorings
without improvement (``epochs`` is the cap). The plan holds no test file: the test split is
scored once, by the caller, after selection.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.config import TrainingConfig
from core.errors import PlatformError
from core.tables import KIND_IDS, KIND_OF_TASK
from training import evaluation as ev
from training.data import EVAL_FIELDS, SIDE_FIELDS, TRAIN_FIELDS, Batch, PetastormSource, TensorBatches, rows_of
from training.losses import LOSS_NAMES, row_counts, task_losses
from training.model import TaskModel, build_model, last_shared_layer, unwrap
from training.progress import Progress, ensure_output
from training.spec import ModelSpec
from training.step import AttentionByProperty, TrainTask, build_scheduler, prepare_torch
from training.weighting import build_weighting

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPlan:
    """Everything a training process needs; picklable (TorchDistributor ships it to each process).

    Attributes:
        spec: ``ModelSpec.to_dict()`` of the model to build.
        training: optimiser, weighting, batch size, reader and early-stopping settings.
        train_files: Parquet files of the training split.
        valid_files: Parquet files of the validation split (model selection; may be empty).
        epochs: the cap on passes over the training files.
        select: choose the weights by validation score and stop early (full training); without it
            every epoch runs and the last weights are kept (incremental training on one day).
        init_state: serialized state dict to warm-start from (incremental training), or None.
        max_steps_per_epoch: stop an epoch early (smoke runs), or None.
        log_every: record the losses every this many steps.
        preload: each process first reads its whole shard into memory and trains from there
            (benchmarks' reference; memory grows with the shard).
        progress: report progress (a bar on a terminal, log lines elsewhere).
    """

    spec: dict[str, Any]
    training: TrainingConfig
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    epochs: int
    select: bool = True
    init_state: bytes | None = None
    max_steps_per_epoch: int | None = None
    log_every: int = 20
    preload: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    """What rank 0 returns: the selected weights, learning curves, validation scores, attention analysis."""

    state: bytes
    steps: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    selected: dict[str, float] = field(default_factory=dict)
    attention_mean: list[list[float | None]] = field(default_factory=list)
    attention_counts: list[list[int]] = field(default_factory=list)
    world_size: int = 1
    train_samples: int = 0
    train_rows: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False

    @property
    def validation_metrics(self) -> dict[str, float]:
        """Validation metrics of the selected weights (``valid_*`` keys without the prefix)."""
        return {k[len("valid_"):]: v for k, v in self.selected.items() if k.startswith("valid_")}

    def model(self) -> TaskModel:
        """Rebuild the selected model (eval mode) from the returned state."""
        return model_from_state(self.state)


def dump_state(model: TaskModel) -> bytes:
    """Weights and spec of ``model`` as bytes (torch.save of plain tensors and JSON-able data)."""
    buf = io.BytesIO()
    torch.save({"spec": model.spec.to_dict(), "weights": model.state_dict()}, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


def model_from_state(data: bytes) -> TaskModel:
    """The model (eval mode) of :func:`dump_state` bytes (a DUPN-family or a tabular model)."""
    state = load_state(data)
    model = workload_of(state["spec"]).build()
    model.load_state_dict(state["weights"])
    return model.eval()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _all_have_batch(has: bool, world: int) -> bool:
    """True while every rank still has a batch (keeps DDP's collective calls in step)."""
    if world == 1:
        return has
    flag = torch.tensor([1 if has else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _broadcast_flag(value: bool, world: int) -> bool:
    """Rank 0's decision, on every rank."""
    if world == 1:
        return value
    flag = torch.tensor([1 if value else 0], dtype=torch.int32)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def kinds_of(tasks: Iterable[str]) -> tuple[int, ...] | None:
    """The row kinds holding examples of ``tasks`` (None: every kind)."""
    kinds = sorted({KIND_IDS[KIND_OF_TASK[task]] for task in tasks})
    return None if len(kinds) == len(KIND_IDS) else tuple(kinds)


def train_source(cfg: TrainingConfig, files: Iterable[str], rank: int = 0, world: int = 1,
                 tasks: Iterable[str] | None = None, fields: Sequence[str] = TRAIN_FIELDS,
                 bucket: bool | None = None) -> PetastormSource:
    """The shuffled training reader of one rank (rows of ``tasks``' kinds only), length-bucketed as
    ``training.bucket_by_length`` says unless ``bucket`` is given (False for rows without a sequence)."""
    return PetastormSource(files=tuple(files), fields=tuple(fields), batch_size=cfg.batch_size, shard=rank,
                           shard_count=world, shuffle=True, shuffle_capacity=cfg.shuffle_buffer,
                           bucket_by_length=cfg.bucket_by_length if bucket is None else bucket,
                           workers=1 if cfg.deterministic else cfg.reader_workers, seed=cfg.seed,
                           kinds=kinds_of(tasks) if tasks is not None else None)


def eval_source(cfg: TrainingConfig, files: Iterable[str], tasks: Iterable[str] | None = None,
                fields: Sequence[str] = EVAL_FIELDS) -> PetastormSource:
    """An in-order reader of a validation or test split (with the keys the metrics group by)."""
    return PetastormSource(files=tuple(files), fields=tuple(fields), batch_size=cfg.eval_batch_size, shuffle=False,
                           bucket_by_length=False, workers=1 if cfg.deterministic else cfg.reader_workers,
                           kinds=kinds_of(tasks) if tasks is not None else None)


def examples_in(batch: Batch, loss_names: Iterable[str]) -> int:
    """Training examples of a batch: every impression slot, follow impression and tier label a loss uses
    (an impression of an L2R list counts once per task, as in one-row-per-example layouts)."""
    return sum(row_counts(batch, [n for n in loss_names if n != "ctcvr"]).values())


def evaluate_split(model: TaskModel, batches: Iterable[Batch],
                   attention: AttentionByProperty | None = None) -> tuple[dict[str, float], ev.Predictions]:
    """Metrics and predictions of ``model`` over one split's batches (optionally the attention analysis)."""
    hook = attention.update if attention is not None else None
    pred = ev.predict(model, batches, on_batch=hook)
    return ev.metrics(pred), pred


class Workload(Protocol):
    """What :func:`train_process` needs from a kind of model besides the loop itself: how to build
    it, read its splits, compute its losses and score validation."""

    loss_names: tuple[str, ...]
    known_losses: tuple[str, ...]

    def build(self) -> TaskModel: ...

    def train_source(self, cfg: TrainingConfig, files: Sequence[str], rank: int = 0, world: int = 1) \
        -> PetastormSource: ...

    def eval_source(self, cfg: TrainingConfig, files: Sequence[str]) -> PetastormSource: ...

    def losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], names: Iterable[str]) \
        -> dict[str, Tensor]: ...

    def counts(self, batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]: ...

    def examples(self, batch: Batch) -> int: ...

    def score(self, model: nn.Module, batches: Iterable[Batch], analyse: bool = False) -> dict[str, float]: ...

    def selection_score(self, values: Mapping[str, float], cfg: TrainingConfig) -> float: ...

    def shown(self, values: Mapping[str, float]) -> dict[str, float]: ...

    def analyse(self, model: nn.Module, batches: Iterable[Batch]) -> None: ...

    def report(self, result: "TrainResult") -> None: ...


class DUPNWorkload:
    """DUPN and its baselines on ``features/training_examples`` (one row per example group)."""

    known_losses: tuple[str, ...] = LOSS_NAMES

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loss_names = spec.loss_names
        self.attention = AttentionByProperty(spec.vocab["behavior"], spec.vocab["time_bucket"], relative=True)

    def build(self) -> TaskModel:
        return build_model(self.spec)

    def train_source(self, cfg: TrainingConfig, files: Sequence[str], rank: int = 0, world: int = 1) -> PetastormSource:
        return train_source(cfg, files, rank, world, self.spec.tasks, fields=self.fields(TRAIN_FIELDS))

    def eval_source(self, cfg: TrainingConfig, files: Sequence[str]) -> PetastormSource:
        return eval_source(cfg, files, self.spec.tasks, fields=self.fields(EVAL_FIELDS))

    def fields(self, base: Sequence[str]) -> tuple[str, ...]:
        """``base`` and, for a model that reads raw side inputs (the hybrid), :data:`SIDE_FIELDS`."""
        return (*base, *SIDE_FIELDS) if self.spec.reads_side else tuple(base)

    def losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], names: Iterable[str]) \
            -> dict[str, Tensor]:
        return task_losses(outputs, batch, names)

    def counts(self, batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]:
        return row_counts(batch, names)

    def examples(self, batch: Batch) -> int:
        return examples_in(batch, self.loss_names)

    def score(self, model: nn.Module, batches: Iterable[Batch], analyse: bool = False) -> dict[str, float]:
        scores, _ = evaluate_split(unwrap(model), batches, self.attention if analyse else None)
        return scores

    def selection_score(self, values: Mapping[str, float], cfg: TrainingConfig) -> float:
        return ev.selection_score(values, cfg.early_stopping.min_rows)

    def shown(self, values: Mapping[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in values.items() if k in ev.REPORTED_METRICS}

    def analyse(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """The attention analysis of the selected weights (on validation)."""
        evaluate_split(unwrap(model), batches, self.attention)

    def report(self, result: "TrainResult") -> None:
        mean, counts = self.attention.result()
        result.attention_mean = [[None if math.isnan(x) else float(x) for x in r] for r in mean]
        result.attention_counts = counts.tolist()


def workload_of(spec: Mapping[str, Any]) -> Workload:
    """The workload of a stored spec: a tabular model's (``kind: tabular``) or the DUPN family's."""
    if spec.get("kind") == "tabular":
        from training.tabular import TabularSpec, TabularWorkload

        return TabularWorkload(TabularSpec.from_dict(spec))
    return DUPNWorkload(ModelSpec.from_dict(spec))


class _Selector:
    """Keeps the best validation score's weights and counts scorings without improvement."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_row: dict[str, float] = {}
        self.stale = 0

    def offer(self, score: float, model: torch.nn.Module, row: dict[str, float]) -> None:
        if not math.isnan(score) and score > self.best + self.min_delta:
            self.best, self.stale = score, 0
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_row = dict(row)
        else:
            self.stale += 1

    @property
    def exhausted(self) -> bool:
        return self.stale >= self.patience


def train_process(plan: TrainPlan, data: Mapping[str, TensorBatches] | None = None,
                  work: Workload | None = None) -> TrainResult | None:
    """Train in this process (one rank). Returns the result on rank 0, None on the others.

    Args:
        plan: what to train.
        data: in-memory ``{"train": ..., "valid": ...}`` batches instead of Petastorm (single
            process only: tests and benchmarks).
        work: the workload, when it is not the one of ``plan.spec`` (:func:`workload_of`): e.g. a
            study's other objective for the same model (in-process calls only; the plan ships none).
    """
    rank, world = _distributed()
    cfg = plan.training
    if plan.progress and rank == 0:
        ensure_output()
    prepare_torch(cfg.torch_threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed + rank)
    work = work if work is not None else workload_of(plan.spec)
    model: torch.nn.Module = work.build()
    if plan.init_state is not None:
        model.load_state_dict(load_state(plan.init_state)["weights"])
        logger.info("warm start from the given weights")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    # the weights validation scores and training keeps: the model's, or (full training) their moving average,
    # kept by rank 0 alone (the only rank that scores and returns them); incremental training keeps its last
    # weights: one day's steps are fewer than the average remembers
    averaged = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) \
        if cfg.ema_decay > 0 and plan.select and rank == 0 else None

    def scored() -> TaskModel:
        return unwrap(averaged.module) if averaged is not None else unwrap(model)

    weighting = build_weighting(cfg.weighting, work.loss_names, last_shared_layer(model), work.known_losses)
    task = TrainTask(model, weighting, cfg, work.loss_names, losses=work.losses, counts=work.counts)
    result = TrainResult(state=b"", world_size=world)
    if data is None and plan.preload:
        data = {"train": TensorBatches.collect(work.train_source(cfg, plan.train_files, rank, world))}
        if rank == 0 and plan.valid_files:
            data["valid"] = TensorBatches.collect(work.eval_source(cfg, plan.valid_files))
    has_valid = bool(plan.valid_files) or (data is not None and "valid" in data)
    rows_total = data["train"].count_rows() if data is not None \
        else work.train_source(cfg, plan.train_files).count_rows()
    steps_per_epoch = max(1, math.ceil(rows_total / world / cfg.batch_size))
    if plan.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max(plan.max_steps_per_epoch, 1))
    scheduler = build_scheduler(task.optimizer, cfg.lr_schedule, steps_per_epoch, plan.epochs)
    evals = max(1, cfg.early_stopping.evals_per_epoch) if plan.select else 1
    eval_every = max(1, math.ceil(steps_per_epoch / evals))
    selector = _Selector(cfg.early_stopping.patience, cfg.early_stopping.min_delta)
    progress = Progress("train", steps_per_epoch * plan.epochs, unit="examples", every_s=cfg.progress_every_s,
                        enabled=plan.progress and rank == 0)

    def valid_batches() -> Iterator[Batch]:
        if data is not None and "valid" in data:
            return data["valid"].batches()
        return work.eval_source(cfg, plan.valid_files).batches()

    def validate(epoch: int, step: int, last: bool) -> bool:
        """Score validation on rank 0; True when every rank should stop."""
        stop = False
        if rank == 0 and has_valid:
            t0 = time.perf_counter()
            scores = work.score(scored(), valid_batches(), analyse=last)
            score = work.selection_score(scores, cfg)
            row = {"step": float(step), "epoch": float(epoch), "epoch_fraction": step / steps_per_epoch,
                   "selection_score": score, "eval_seconds": time.perf_counter() - t0,
                   **{f"valid_{k}": v for k, v in scores.items()}}
            result.evals.append(row)
            if plan.select:
                selector.offer(score, scored(), row)
                stop = selector.exhausted
            progress.log.info("validation at step %d (epoch %.2f): score %.4f %s%s", step, step / steps_per_epoch,
                              score, work.shown(scores),
                              " (best so far)" if plan.select and selector.stale == 0 else "")
        return _broadcast_flag(stop, world)

    step = 0
    stop = False
    started = time.perf_counter()
    for epoch in range(plan.epochs):
        n_steps = 0
        batches = (data["train"].batches(epoch) if data is not None
                   else work.train_source(cfg, plan.train_files, rank, world).batches(epoch))
        it = iter(batches)
        while True:
            batch = next(it, None)
            if not _all_have_batch(batch is not None, world):
                break
            if plan.max_steps_per_epoch is not None and n_steps >= plan.max_steps_per_epoch:
                break
            assert batch is not None  # every rank has one (checked collectively above)
            stats = {**task.step(batch), "lr": float(scheduler.get_last_lr()[0])}
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(unwrap(model))
            examples = work.examples(batch)
            result.train_samples += examples * world
            result.train_rows += rows_of(batch) * world
            step += 1
            n_steps += 1
            progress.update(examples * world, {k[5:]: v for k, v in stats.items() if k.startswith("loss_")})
            if rank == 0 and (step % plan.log_every == 0 or step == 1):
                result.steps.append({"step": float(step), "epoch": float(epoch), **stats})
            if plan.select and n_steps % eval_every == 0 and n_steps < steps_per_epoch:
                if validate(epoch, step, last=False):
                    stop = True
                    break
        close = getattr(it, "close", None)
        if close is not None:  # stops this shard's reader threads when the epoch ended early
            close()
        if n_steps == 0 and plan.max_steps_per_epoch != 0:  # all ranks stop at the same step: all raise together
            raise PlatformError(f"epoch {epoch}: rank {rank} of {world} read no training batch from "
                                f"{len(plan.train_files)} files; with {world} processes each needs at least one "
                                f"Parquet row group (rebuild the training set, or use fewer processes)")
        if stop:
            break
        if plan.select or epoch == plan.epochs - 1:
            if validate(epoch, step, last=not plan.select and epoch == plan.epochs - 1):
                stop = True
                break
    result.train_seconds = time.perf_counter() - started
    progress.close()
    result.stopped_early = stop
    if world > 1:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return None
    final = scored()
    if plan.select and selector.best_state is not None:
        final.load_state_dict(selector.best_state)
        result.selected = dict(selector.best_row)
        if has_valid:  # e.g. DUPN's attention analysis of the selected weights, on validation
            work.analyse(final, valid_batches())
    elif result.evals:
        result.selected = dict(result.evals[-1])
    work.report(result)
    result.state = dump_state(final)
    progress.log.info("trained %d examples (%d rows) in %.0fs (%.0f examples/s)%s; selected %s",
                      result.train_samples, result.train_rows, result.train_seconds,
                      result.train_samples / max(result.train_seconds, 1e-9), ", stopped early" if stop else "",
                      {k: round(v, 4) for k, v in result.selected.items() if k in ("step", "selection_score")})
    if world > 1:
        dist.destroy_process_group()
    return result


def run_training(plan: TrainPlan, num_processes: int, use_distributor: bool) -> TrainResult:
    """Run :func:`train_process` in this process (1 process, no distributor) or in
    ``num_processes`` processes through Spark's TorchDistributor (local mode on one machine,
    executors on a cluster)."""
    if num_processes == 1 and not use_distributor:
        result = train_process(plan)
    else:
        from pyspark.ml.torch.distributor import TorchDistributor
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        local = spark is None or str(spark.sparkContext.master).startswith("local")
        distributor = TorchDistributor(num_processes=num_processes, local_mode=local,
                                       use_gpu=torch.cuda.is_available())
        result = distributor.run(train_process, plan)
    if result is None:
        raise RuntimeError("training returned no result from rank 0")
    return result
