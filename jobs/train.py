"""Petastorm -> PyTorch multi-task training of the DUPN model; MLflow logging, registration, promotion.

    python -m jobs.train --config conf/local.yaml --mode full --start 2026-11-05 --end 2026-11-12
    python -m jobs.train --config conf/local.yaml --mode incremental --date 2026-11-13
    spark-submit jobs/train.py --config conf/local.yaml --mode full --start ... --end ...

``full`` trains a new model on the training split of [start, end]; ``incremental`` warm-starts
from the ``champion`` version and trains on day ``--date`` only (the paper's daily increments;
new ids need nothing: the encoding is hashed). Both evaluate on the held-out days of the latest
training set (or ``--eval-days``) after every epoch, log everything to MLflow, register a new
version, evaluate the current champion on the same held-out examples, and move the champion
alias only if no task metric is worse by more than ``training.promotion.tolerance``.
Training runs in ``training.num_processes`` processes through Spark's TorchDistributor
(``training.use_distributor=false`` with one process trains in this process, for debugging).
"""
from __future__ import annotations

import argparse
import datetime as _dt

from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features.training_set import range_days
from registry.models import ModelRegistry, log_model
from registry.runs import holdout_metrics, log_training, promote
from registry.tracking import MlflowTracker
from training.data import PetastormSource
from training.datasets import serving_statistics, training_data
from training.spec import ModelSpec
from training.trainer import TrainPlan, evaluate, run_training

JOB = "train"


def run(ctx: JobContext) -> str:
    cfg, args = ctx.cfg, ctx.args
    tc = cfg.training
    if args.mode == "full":
        if not (args.start and args.end):
            raise PlatformError("--mode full needs --start and --end")
        days, last = range_days(args.start, args.end), args.end
    else:
        if not args.date:
            raise PlatformError("--mode incremental needs --date")
        days, last = [args.date.isoformat()], args.date
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    data = training_data(tables, days, args.eval_days, tc.tasks)
    registry = ModelRegistry(cfg.mlflow)
    champion_version = registry.champion_version()
    champion = registry.load(champion_version) if champion_version else None
    if args.mode == "incremental":
        if champion is None:
            raise PlatformError(f"incremental training warm-starts from the '{registry.alias}' version of "
                                f"'{registry.name}', and there is none: run --mode full first")
        spec = champion.spec
        init_state = registry.state_bytes(champion.version)
        stats_note: dict[str, object] = {"from_champion_version": champion.version}
        epochs = tc.incremental_epochs
    else:
        # the serving population the model is about to serve: the latest statistics up to the held-out days
        until = max([last.isoformat(), *data.eval_days])
        stats = serving_statistics(tables, _dt.date.fromisoformat(until), cfg.inputs.rank_features_dim)
        spec = ModelSpec.from_config(cfg, tasks=data.tasks, norm=stats.norm)
        init_state, epochs = None, tc.epochs
        stats_note = {"feature_stats_day": stats.day, "feature_stats_version": stats.version}
    plan = TrainPlan(spec=spec.to_dict(), training=tc, train_files=data.train_files, eval_files=data.eval_files,
                     epochs=epochs, init_state=init_state, max_steps_per_epoch=tc.max_steps_per_epoch)
    tags = {"mode": args.mode, "train_days": f"{days[0]}..{days[-1]}", "eval_days": ",".join(data.eval_days),
            "job_run_id": ctx.run_id}
    with MlflowTracker(cfg.mlflow, run_name=f"{args.mode}-{days[-1]}", tags=tags) as tracker:
        result = run_training(plan, tc.num_processes, tc.use_distributor)
        params = {"mode": args.mode, "tasks": ",".join(spec.tasks), "architecture": spec.model.architecture,
                  "property_in": spec.model.property_in, "esmm": spec.esmm, "weighting": tc.weighting.kind,
                  "optimizer": tc.optimizer, "lr": tc.lr, "weight_decay": tc.weight_decay,
                  "dropout": spec.model.dropout, "batch_size": tc.batch_size, "epochs": epochs,
                  "num_processes": result.world_size, "representation_dim": spec.model.representation_dim,
                  "max_len": spec.max_len, "training_examples_version": data.version,
                  "train_days": f"{days[0]}..{days[-1]}", "eval_days": ",".join(data.eval_days), **stats_note}
        lineage = {"training_examples": {"version": data.version, "train_days": list(days),
                                         "eval_days": list(data.eval_days),
                                         "build": tables.metadata(t.TRAINING_EXAMPLES, data.version)},
                   "normalisation": spec.norm, "vocab_sizes": spec.vocab,
                   "encoding": {"hash_buckets": cfg.sequences.hash_buckets.model_dump(),
                                "time_bucket_edges_s": cfg.sequences.time_bucket_edges_s,
                                "method": "xxhash64(field, value) mod (buckets - 2) + 2; 0 pad, 1 unknown"},
                   **stats_note}
        log_training(tracker, result, params, cfg.to_dict(), lineage, cfg.sequences.time_bucket_edges_s)
        version = registry.register(log_model(result.state), tags={"mode": args.mode, "run_id": tracker.run_id})
        candidate = holdout_metrics(result.final_metrics)
        champion_metrics = None
        if champion is not None:
            eval_source = PetastormSource(files=data.eval_files, batch_size=tc.eval_batch_size, shuffle=False,
                                          workers=tc.reader_workers)
            champion_metrics, _ = evaluate(champion.model, eval_source.batches())
        decision = promote(tracker, registry, version, candidate, champion_metrics, champion_version,
                           tc.promotion.tolerance, tc.promotion.auto_promote)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in candidate.items() if not k.endswith(("rows", "groups")))
    rate = result.train_samples / max(result.train_seconds, 1e-9)
    return "\n".join([
        data.describe(),
        f"trained {result.train_samples:,} samples in {result.train_seconds:.0f}s ({rate:,.0f}/s, "
        f"{result.world_size} process(es)); held-out: {shown}",
        f"promotion of version {version}: {decision.describe()}",
        f"{JOB}: registered {registry.name} version {version} (MLflow run {tracker.run_id}); champion is version "
        f"{registry.champion_version()}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date="optional")
    p.add_argument("--mode", choices=("full", "incremental"), required=True)
    p.add_argument("--start", type=parse_date, help="first training day (full)")
    p.add_argument("--end", type=parse_date, help="last training day (full)")
    p.add_argument("--eval-days", nargs="+", metavar="DAY", help="held-out days (default: the training set's)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
