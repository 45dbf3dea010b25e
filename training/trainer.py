"""The training run: one function per process, run directly or by Spark's TorchDistributor.

:func:`train_process` is what every process executes. With ``WORLD_SIZE > 1`` in its
environment (TorchDistributor / torchrun set it) it joins a gloo (CPU) or nccl (GPU) process
group, wraps the model in DistributedDataParallel and reads its own Petastorm shard; all
ranks stop an epoch together as soon as one shard is exhausted. Rank 0 evaluates the
held-out examples after every epoch and returns the :class:`TrainResult`; the driver logs it.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

from core.config import TrainingConfig
from core.errors import PlatformError
from training import metrics
from training.data import Batch, PetastormSource, TensorBatches
from training.model import DUPNModel, build_model, last_shared_layer, unwrap
from training.spec import ModelSpec
from training.step import AttentionByProperty, TrainTask, label_arrays
from training.weighting import build_weighting

logger = logging.getLogger(__name__)

PREDICTION_KEYS = ("ctr_prob", "ctcvr_prob", "l2r_score", "follow_prob", "ppp_probs")


@dataclass(frozen=True)
class TrainPlan:
    """Everything a training process needs; picklable (TorchDistributor ships it to each process).

    Attributes:
        spec: ``ModelSpec.to_dict()`` of the model to build.
        training: optimiser, weighting, batch size, reader settings.
        train_files, eval_files: Parquet files of the training and held-out examples.
        epochs: passes over the training files.
        init_state: serialized state dict to warm-start from (incremental training), or None.
        max_steps_per_epoch: stop an epoch early (smoke runs), or None.
        log_every: record the losses every this many steps.
        preload: each process first reads its whole shard into memory and trains from there
            (the feeding benchmark's reference; memory grows with the shard).
    """

    spec: dict[str, Any]
    training: TrainingConfig
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    epochs: int
    init_state: bytes | None = None
    max_steps_per_epoch: int | None = None
    log_every: int = 20
    preload: bool = False


@dataclass
class TrainResult:
    """What rank 0 returns: weights, learning curves, held-out metrics, attention analysis."""

    state: bytes
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    attention_mean: list[list[float]] = field(default_factory=list)
    attention_counts: list[list[int]] = field(default_factory=list)
    world_size: int = 1
    train_samples: int = 0
    train_seconds: float = 0.0

    @property
    def final_metrics(self) -> dict[str, float]:
        return dict(self.epochs[-1]) if self.epochs else {}

    def model(self) -> DUPNModel:
        """Rebuild the trained model (eval mode) from the returned state."""
        state = load_state(self.state)
        model = build_model(ModelSpec.from_dict(state["spec"]))
        model.load_state_dict(state["weights"])
        return model.eval()


def dump_state(model: DUPNModel) -> bytes:
    """Weights and spec of ``model`` as bytes (torch.save of plain tensors and JSON-able data)."""
    buf = io.BytesIO()
    torch.save({"spec": model.spec.to_dict(), "weights": model.state_dict()}, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


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


def _source(plan: TrainPlan, files: tuple[str, ...], rank: int, world: int, train: bool,
            batch_size: int) -> PetastormSource:
    cfg = plan.training
    return PetastormSource(files=files, batch_size=batch_size, shard=rank if train else 0,
                           shard_count=world if train else 1, shuffle=train,
                           workers=cfg.reader_workers, seed=cfg.seed)


def evaluate(model: DUPNModel, batches: Iterator[Batch]) -> tuple[dict[str, float], AttentionByProperty]:
    """Held-out metrics of ``model`` and the attention analysis over ``batches``."""
    model.eval()
    spec = model.spec
    att = AttentionByProperty(spec.vocab["behavior"], spec.vocab["time_bucket"], relative=True)
    outs: list[dict[str, np.ndarray]] = []
    labels: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            att.update(out, batch)
            pred: dict[str, np.ndarray] = {}
            if "ctr_logit" in out:
                pred["ctr_prob"] = torch.sigmoid(out["ctr_logit"]).numpy()
            if "ctcvr_prob" in out:
                pred["ctcvr_prob"] = out["ctcvr_prob"].numpy()
            if "l2r_score" in out:
                pred["l2r_score"] = out["l2r_score"].numpy()
            if "follow_logit" in out:
                pred["follow_prob"] = torch.sigmoid(out["follow_logit"]).numpy()
            if "ppp_logits" in out:
                pred["ppp_probs"] = torch.softmax(out["ppp_logits"], dim=-1).numpy()
            outs.append(pred)
            labels.append(label_arrays(batch))
    if not outs:
        return {}, att
    return metrics.evaluate(metrics.concat(outs), metrics.concat(labels)), att


def train_process(plan: TrainPlan, data: Mapping[str, TensorBatches] | None = None) -> TrainResult | None:
    """Train in this process (one rank). Returns the result on rank 0, None on the others.

    Args:
        plan: what to train.
        data: in-memory ``{"train": ..., "eval": ...}`` batches instead of Petastorm (single
            process only: tests and the feeding benchmark).
    """
    rank, world = _distributed()
    cfg = plan.training
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed + rank)
    spec = ModelSpec.from_dict(plan.spec)
    model: torch.nn.Module = build_model(spec)
    if plan.init_state is not None:
        warm = load_state(plan.init_state)
        model.load_state_dict(warm["weights"])
        logger.info("warm start from the given weights")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    weighting = build_weighting(cfg.weighting, spec.loss_names, last_shared_layer(model))
    task = TrainTask(model, weighting, cfg)
    result = TrainResult(state=b"", world_size=world)
    if data is None and plan.preload:
        data = {"train": TensorBatches.collect(_source(plan, plan.train_files, rank, world, True, cfg.batch_size))}
        if rank == 0:
            data["eval"] = TensorBatches.collect(_source(plan, plan.eval_files, 0, 1, False, cfg.eval_batch_size))
    step = 0
    for epoch in range(plan.epochs):
        started = time.time()
        samples = 0
        sums: dict[str, float] = {}
        n_steps = 0
        batches = (data["train"].batches(epoch) if data is not None
                   else _source(plan, plan.train_files, rank, world, True, cfg.batch_size).batches(epoch))
        it = iter(batches)
        while True:
            batch = next(it, None)
            if not _all_have_batch(batch is not None, world):
                break
            if plan.max_steps_per_epoch is not None and n_steps >= plan.max_steps_per_epoch:
                break
            assert batch is not None  # every rank has one (checked collectively above)
            stats = task.step(batch)
            samples += len(batch["task_id"])
            step += 1
            n_steps += 1
            for k, v in stats.items():
                if k.startswith(("loss", "weight")):
                    sums[k] = sums.get(k, 0.0) + v
            if rank == 0 and (step % plan.log_every == 0 or step == 1):
                result.steps.append({"step": float(step), "epoch": float(epoch), **stats})
        close = getattr(it, "close", None)
        if close is not None:  # stops this shard's reader threads when the epoch ended early
            close()
        if n_steps == 0 and plan.max_steps_per_epoch != 0:  # all ranks stop at the same step: all raise together
            raise PlatformError(f"epoch {epoch}: rank {rank} of {world} read no training batch from "
                                f"{len(plan.train_files)} files; with {world} processes each needs at least one "
                                f"Parquet row group (rebuild the training set, or use fewer processes)")
        seconds = time.time() - started
        total_samples = samples * world if world > 1 else samples
        result.train_samples += total_samples
        result.train_seconds += seconds
        if rank == 0:
            row = {f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()}
            eval_batches = (data["eval"].batches() if data is not None and "eval" in data
                            else _source(plan, plan.eval_files, 0, 1, False, cfg.eval_batch_size).batches())
            scores, att = evaluate(unwrap(model), eval_batches)
            row.update({f"holdout_{k}": v for k, v in scores.items()})
            row.update({"epoch": float(epoch), "samples_per_second": total_samples / max(seconds, 1e-9),
                        "epoch_seconds": seconds, "steps": float(n_steps)})
            result.epochs.append(row)
            mean, counts = att.result()
            result.attention_mean = [[None if math.isnan(x) else float(x) for x in r] for r in mean]  # type: ignore
            result.attention_counts = counts.tolist()
            logger.info("epoch %d: %d samples in %.0fs (%.0f/s), holdout %s", epoch, total_samples, seconds,
                        total_samples / max(seconds, 1e-9),
                        {k: round(v, 4) for k, v in scores.items() if not k.endswith("rows")})
        if world > 1:
            dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return None
    result.state = dump_state(unwrap(model))
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
