"""Multi-task training on a declared feature table: Petastorm -> the platform's trainer -> MLflow.

    python -m jobs.train_tabular --config conf/census.yaml
    python -m jobs.train_tabular --config conf/census.yaml --set training.model.architecture=mmoe \\
        --set training.weighting.kind=gradnorm
    spark-submit jobs/train_tabular.py --config conf/census.yaml --tasks income

Trains ``training.model.architecture`` (shared_bottom, mmoe, cgc, ple, cross_stitch) with
``training.weighting`` on ``features/tabular_<tabular.name>`` (``jobs/build_tabular_set.py``): epochs
and early stopping are chosen on the validation split, the test split is scored once. The model
(with its encoding) is registered as a version of ``mlflow.registered_model``; the ``champion``
alias moves when no task's test metric is worse than the champion's beyond a paired bootstrap
interval (``training.promotion``).
"""
from __future__ import annotations

import argparse
import math

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features.tabular import load_tabular_set
from registry.models import ModelRegistry, decide_tabular_promotion, log_model
from registry.runs import log_test, log_training, promote
from registry.tracking import MlflowTracker
from training.tabular import TabularModel, TabularSpec, TabularWorkload, main_metric, metrics, predict
from training.trainer import TrainPlan, run_training

JOB = "train_tabular"
PRELOAD_MAX_ROWS = 2_000_000  # a training split up to this many rows is read into memory once


def shown(spec: TabularSpec, values: dict[str, float]) -> str:
    keys = [main_metric(spec, t) for t in spec.tasks]
    return " ".join(f"{k}={values[k]:.4f}" for k in keys if k in values and not math.isnan(values[k]))


def preload(asked: bool | None, rows: dict[str, int]) -> bool:
    """Read the training split into memory once (small tables), or stream it every epoch."""
    return asked if asked is not None else rows.get("train", PRELOAD_MAX_ROWS + 1) <= PRELOAD_MAX_ROWS


def run(ctx: JobContext) -> str:
    cfg, args = ctx.cfg, ctx.args
    tc = cfg.training
    tables = get_tables(get_spark(cfg), cfg)
    built = load_tabular_set(tables, cfg.tabular)
    if not built.files["valid"]:
        raise PlatformError(f"table {built.table.name} has no validation rows: raise tabular.split.valid_frac")
    spec = TabularSpec.from_config(cfg.tabular, tc, built.encoding.to_dict(), tasks=args.tasks)
    plan = TrainPlan(spec=spec.to_dict(), training=tc, train_files=built.files["train"],
                     valid_files=built.files["valid"], epochs=tc.epochs, select=True,
                     max_steps_per_epoch=tc.max_steps_per_epoch, preload=preload(args.preload, built.rows))
    registry = ModelRegistry(cfg.mlflow)
    champion_version = registry.champion_version()
    champion = registry.load(champion_version) if champion_version else None
    work = TabularWorkload(spec)
    tags = {"job": JOB, "dataset": spec.name, "job_run_id": ctx.run_id, "family": "tabular"}
    with MlflowTracker(cfg.mlflow, run_name=f"{spec.name}-{spec.architecture}-{tc.weighting.kind}", tags=tags) \
            as tracker:
        result = run_training(plan, tc.num_processes, tc.use_distributor)
        params = {"dataset": spec.name, "tasks": ",".join(spec.tasks), "architecture": spec.architecture,
                  "weighting": tc.weighting.kind, "optimizer": tc.optimizer, "lr": tc.lr, "batch_size": tc.batch_size,
                  "epochs_cap": tc.epochs, "embedding_dim": spec.embedding_dim, "dropout": spec.dropout,
                  "num_processes": result.world_size, "tabular_table_version": built.version,
                  "split": cfg.tabular.split.model_dump(), "rows": built.rows}
        lineage = {"table": built.table.name, "version": built.version, "source": cfg.tabular.table,
                   "encoding": built.encoding.to_dict()}
        log_training(tracker, result, params, cfg.to_dict(), lineage, [])
        model = result.model()
        test_batches = work.eval_source(tc, built.files["test"]).batches
        candidate_pred = predict(model, test_batches())
        test = metrics(spec, candidate_pred)
        log_test(tracker, test)
        version = registry.register(log_model(result.state, tabular=True),
                                    tags={"job": JOB, "run_id": tracker.run_id})
        champion_pred = None
        if champion is not None:
            old = champion.model
            if not isinstance(old, TabularModel) or old.spec.encoding != spec.encoding:
                raise PlatformError(f"champion version {champion.version} of '{registry.name}' was not trained on "
                                    f"this encoding of {built.table.name}: it cannot be scored on the same test "
                                    f"rows; register to another mlflow.registered_model or move the alias by hand")
            champion_pred = predict(old, test_batches())
        decision = decide_tabular_promotion(candidate_pred, champion_pred, spec, tc.promotion)
        promote(tracker, registry, version, decision, champion_version, tc.promotion.auto_promote)
    rate = result.train_samples / max(result.train_seconds, 1e-9)
    chosen = result.selected
    return "\n".join([
        built.describe(),
        f"trained {spec.architecture} ({tc.weighting.kind} weighting) on {result.train_samples:,} rows in "
        f"{result.train_seconds:.0f}s ({rate:,.0f} rows/s); selected epoch {chosen.get('epoch_fraction', 0):.2f} of "
        f"{len(result.evals)} validation scorings{', stopped early' if result.stopped_early else ''}; validation: "
        f"{shown(spec, result.validation_metrics)}",
        f"test: {shown(spec, test)}",
        f"promotion of version {version}: {decision.describe()}",
        f"{JOB}: registered {registry.name} version {version} (MLflow run {tracker.run_id}); champion is version "
        f"{registry.champion_version()}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="train these tasks only (default: every tabular task)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=None,
                   help=f"read the training split into memory once instead of streaming it through Petastorm every "
                        f"epoch (default: when it has at most {PRELOAD_MAX_ROWS:,} rows)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
