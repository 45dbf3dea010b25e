"""Petastorm -> PyTorch multi-task training; MLflow logging, registration, promotion.

    python -m jobs.train --config conf/local.yaml --mode full --start 2026-11-05 --end 2026-11-12
    python -m jobs.train --config conf/local.yaml --mode incremental --date 2026-11-13
    spark-submit jobs/train.py --config conf/local.yaml --mode full --start ... --end ...

``full`` trains a new model on the training split of [start, end], scoring the validation split
of the latest training set during training: the weights of the best validation score are kept
and training stops when it stops improving (``training.epochs`` is the cap). ``incremental``
warm-starts from the ``champion`` version and trains ``training.incremental_epochs`` on day
``--date`` only (the paper's daily increments; new ids need nothing: the encoding is hashed).
With ``training.hybrid`` full training reads ``features/hybrid_examples`` (jobs/build_hybrid_examples)
and the heads also read its hand-crafted summaries; incremental training reads the table the
champion was trained on.

Then the test split is scored once, the run is logged to MLflow and registered as a new version,
the champion is scored on the same test examples, and the champion alias moves only if no metric
is worse beyond the confidence interval of a paired bootstrap (``training.promotion``).
Training runs in ``training.num_processes`` processes through Spark's TorchDistributor
(``training.use_distributor=false`` with one process trains in this process).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math

from core import faults
from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features.training_set import range_days
from registry.models import ModelRegistry, decide_promotion, log_model
from registry.runs import log_test, log_training, promote
from registry.tracking import MlflowTracker
from training import evaluation as ev
from training.datasets import serving_statistics, training_data
from training.spec import ModelSpec
from training.trainer import DUPNWorkload, TrainPlan, run_training

JOB = "train"
SHOWN = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy",
         "ppp_accuracy_seen", "ctr_ece")


def shown(values: dict[str, float]) -> str:
    return " ".join(f"{k}={values[k]:.4f}" for k in SHOWN if k in values and not math.isnan(values[k]))


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
    registry = ModelRegistry(cfg.mlflow)
    champion_version = registry.champion_version()
    champion = registry.load(champion_version) if champion_version else None
    # the hybrid model reads its side inputs from features/hybrid_examples; incremental training follows the champion
    hybrid = champion.spec.reads_side if args.mode == "incremental" and champion is not None else tc.hybrid
    if champion is not None and champion.spec.reads_side and not hybrid:
        raise PlatformError(f"the champion, version {champion.version} of '{registry.name}', reads side inputs (a "
                            f"hybrid model) and the gate scores it on the candidate's test examples: train with "
                            f"training.hybrid=true, or move the alias '{registry.alias}' to a version without them")
    examples = t.HYBRID_EXAMPLES if hybrid else t.TRAINING_EXAMPLES
    data = training_data(tables, days, tc.tasks, valid_days=args.valid_days, test_days=args.test_days,
                         allow_valid_overlap=args.mode == "incremental", table=examples)
    if args.mode == "incremental":
        if champion is None:
            raise PlatformError(f"incremental training warm-starts from the '{registry.alias}' version of "
                                f"'{registry.name}', and there is none: run --mode full first")
        spec = champion.spec
        init_state = registry.state_bytes(champion.version)
        stats_note: dict[str, object] = {"from_champion_version": champion.version}
        epochs, select = tc.incremental_epochs, False
        valid_files = tuple(f for f in data.valid_files if f not in set(data.train_files))
    else:
        # the serving population the model is about to serve: the latest statistics up to the test days
        until = max([last.isoformat(), *data.test_days])
        stats = serving_statistics(tables, _dt.date.fromisoformat(until), cfg.inputs.rank_features_dim)
        spec = ModelSpec.from_config(cfg, tasks=data.tasks, logit_offsets=data.logit_offsets,
                                     **stats.model_inputs(cfg.training.model.price_reference))
        if hybrid:
            spec = spec.with_side(data.side_columns, data.side_knots)
        elif spec.model.side_inputs:
            raise PlatformError("training.model.side_inputs is set, but the platform's examples carry side inputs "
                                "only with training.hybrid=true (which sets it from features/hybrid_examples): set "
                                "training.hybrid=true, or training.model.side_inputs=0")
        init_state, epochs, select = None, tc.epochs, True
        stats_note = {"feature_stats_day": stats.day, "feature_stats_version": stats.version}
        valid_files = data.valid_files
        if not valid_files:
            raise PlatformError("full training selects epochs on the validation split, and the training set has "
                                "none: set training_set.validation_days >= 1 and rebuild it")
    plan = TrainPlan(spec=spec.to_dict(), training=tc, train_files=data.train_files, valid_files=valid_files,
                     epochs=epochs, select=select, init_state=init_state, max_steps_per_epoch=tc.max_steps_per_epoch)
    tags = {"mode": args.mode, "train_days": f"{days[0]}..{days[-1]}", "valid_days": ",".join(data.valid_days),
            "test_days": ",".join(data.test_days), "job_run_id": ctx.run_id, "family": spec.model.family}
    with MlflowTracker(cfg.mlflow, run_name=f"{args.mode}-{days[-1]}", tags=tags) as tracker:
        result = run_training(plan, tc.num_processes, tc.use_distributor)
        faults.point("train.trained")
        params = {"mode": args.mode, "family": spec.model.family, "tasks": ",".join(spec.tasks),
                  "architecture": spec.model.architecture, "property_in": spec.model.property_in, "esmm": spec.esmm,
                  "weighting": tc.weighting.kind, "optimizer": tc.optimizer, "lr": tc.lr,
                  "weight_decay": tc.weight_decay, "dropout": spec.model.dropout, "batch_size": tc.batch_size,
                  "epochs_cap": epochs, "select_on_validation": select, "num_processes": result.world_size,
                  "representation_dim": spec.model.representation_dim, "max_len": spec.max_len,
                  "training_examples_version": data.version, "examples_table": data.table,
                  "side_inputs": len(spec.side_columns), "train_days": f"{days[0]}..{days[-1]}",
                  "valid_days": ",".join(data.valid_days), "test_days": ",".join(data.test_days),
                  "logit_offsets": spec.logit_offsets, **stats_note}
        lineage = {"training_examples": {"table": data.table, "version": data.version, "train_days": list(days),
                                         "valid_days": list(data.valid_days), "test_days": list(data.test_days),
                                         "build": tables.metadata(examples, data.version)},
                   "normalisation": spec.norm, "vocab_sizes": spec.vocab,
                   "encoding": {"hash_buckets": cfg.sequences.hash_buckets.model_dump(),
                                "time_bucket_edges_s": cfg.sequences.time_bucket_edges_s,
                                "method": "xxhash64(field, value) mod (buckets - 2) + 2; 0 pad, 1 unknown"},
                   **stats_note}
        log_training(tracker, result, params, cfg.to_dict(), lineage, cfg.sequences.time_bucket_edges_s)
        # the test split, scored once: the candidate, then the champion on the same examples for the gate
        candidate_pred = ev.predict(result.model(), DUPNWorkload(spec).eval_source(tc, data.test_files).batches())
        test = ev.metrics(candidate_pred)
        log_test(tracker, test)
        version = registry.register(log_model(result.state), tags={"mode": args.mode, "run_id": tracker.run_id})
        faults.point("train.registered")  # registered, not yet gated: the champion alias has not moved
        champion_pred = ev.predict(champion.model, DUPNWorkload(champion.spec).eval_source(tc, data.test_files)
                                   .batches()) if champion is not None else None
        decision = decide_promotion(candidate_pred, champion_pred, tc.promotion)
        promote(tracker, registry, version, decision, champion_version, tc.promotion.auto_promote)
    rate = result.train_samples / max(result.train_seconds, 1e-9)
    chosen = result.selected
    selection = (f"selected step {chosen.get('step', 0):.0f} (epoch {chosen.get('epoch_fraction', 0):.2f}) of "
                 f"{len(result.evals)} validation scorings{', stopped early' if result.stopped_early else ''}; "
                 if select and chosen else "")
    return "\n".join([
        data.describe(),
        f"trained {result.train_samples:,} examples ({result.train_rows:,} sequences) in {result.train_seconds:.0f}s "
        f"({rate:,.0f} examples/s, {result.world_size} process(es)); {selection}"
        f"validation: {shown(result.validation_metrics)}",
        f"test: {shown(test)}",
        f"promotion of version {version}: {decision.describe()}",
        f"{JOB}: registered {registry.name} version {version} (MLflow run {tracker.run_id}); champion is version "
        f"{registry.champion_version()}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date="optional")
    p.add_argument("--mode", choices=("full", "incremental"), required=True)
    p.add_argument("--start", type=parse_date, help="first training day (full)")
    p.add_argument("--end", type=parse_date, help="last training day (full)")
    p.add_argument("--valid-days", nargs="+", metavar="DAY", help="validation days (default: the training set's)")
    p.add_argument("--test-days", nargs="+", metavar="DAY", help="test days (default: the training set's)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
