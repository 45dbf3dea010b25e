"""Downstream transfer: the shop-preference task (``raw/shop_prefs``) learned four ways, compared in MLflow.

    python -m jobs.transfer --config conf/local.yaml --date 2026-11-14 [--days 2] [--methods rt ft rs ra]
    spark-submit jobs/transfer.py --config conf/local.yaml --date 2026-11-14

The examples are the shop impressions of days (S, D] with S = D - days; every method sees the
users as of the end of S: RT (representation transfer) the published vectors of
``outputs/user_representations`` dt=S, FT (fine-tuning the model version that published those
vectors, or ``--model-version``), RS (the same network from scratch) and RA (a fresh DUPN
retrained on all tasks plus the shop task, within the ``ra_mix`` budget) the sequences of
``features/user_sequences`` dt=S. The joined examples are written to
``features/transfer_examples`` (partition ``dt = D``, split train/valid/test by a hash of
user_id) and read through Petastorm. Each method chooses its epoch on the validation split and
is scored on the test split once, with that epoch's weights. One MLflow run ``transfer-<D>``
holds the comparison (validation curves, ``<m>_chosen_epoch``, ``<m>_test_auc``, ``<m>_seconds``,
the table and the learning curves). See docs/transfer.md.
"""
from __future__ import annotations

import argparse

from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features import transfer as td
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from registry.models import ModelRegistry
from registry.tracking import MlflowTracker
from training import transfer as tr
from training.spec import check_encoding

JOB = "transfer"


def run(ctx: JobContext) -> str:
    cfg, args = ctx.cfg, ctx.args
    tc = cfg.transfer
    days = args.days if args.days is not None else tc.days
    ra_mix = args.ra_mix if args.ra_mix is not None else tc.ra_mix
    methods = list(dict.fromkeys(args.methods))
    window = td.TransferWindow.of(args.date, days)
    td.check_shares(tc.validation_share, tc.test_share)
    ds, snap = args.date.isoformat(), window.snapshot
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    td.require_snapshot(tables, snap)
    registry = ModelRegistry(cfg.mlflow)
    base = registry.load(args.model_version or td.published_version(tables, snap))
    check_encoding(base.spec, cfg.sequences, base.version)
    buckets = {"shop": cfg.sequences.hash_buckets.shop_id, "category": cfg.sequences.hash_buckets.category_id}
    settings = tr.TransferSettings(epochs=tc.epochs, batch_size=tc.batch_size,
                                   eval_batch_size=cfg.training.eval_batch_size, lr=tc.lr, seed=tc.seed,
                                   ra_mix=ra_mix, patience=tc.patience, ft_tower_lr_scale=tc.ft_tower_lr_scale,
                                   price_match=tc.price_match, head_input=tc.head_input, rt_lr=tc.rt_lr,
                                   rt_epochs=tc.rt_epochs,
                                   reader_workers=cfg.training.reader_workers,
                                   weighting=cfg.training.weighting, torch_threads=cfg.training.torch_threads)
    tags = {"job": JOB, "job_run_id": ctx.run_id, "transfer_date": ds, "snapshot_dt": snap,
            "base_model_version": base.version}
    with MlflowTracker(cfg.mlflow, run_name=f"transfer-{ds}", tags=tags) as tracker:
        inputs = Inputs(tables, args.date, cfg.inputs.rank_features_dim)
        labels = inputs.partitions(t.SHOP_PREFS, list(window.example_days))
        items = inputs.snapshot(t.ITEMS)
        try:
            lines = enforce_bound(tables, inputs.validations, args.date, JOB, ctx.run_id,
                                  cfg.quality.max_quarantine_share)
            seq_v, rep_v = tables.version(t.USER_SEQUENCES), tables.version(t.USER_REPRESENTATIONS)
            examples = td.transfer_examples(
                labels.valid, tables.read(t.USER_SEQUENCES, dt=snap, version=seq_v),
                tables.read(t.USER_REPRESENTATIONS, dt=snap, version=rep_v), items, window,
                buckets["shop"], buckets["category"], tc.validation_share, tc.test_share, tc.seed)
            res = tables.replace_partition(examples, td.TRANSFER_EXAMPLES, ds, metadata={
                "job": JOB, "run_id": ctx.run_id, "mlflow_run_id": tracker.run_id, "dt": ds, "snapshot_dt": snap,
                "example_days": list(window.example_days), "validation_share": tc.validation_share,
                "test_share": tc.test_share, "seed": tc.seed,
                "inputs": {**inputs.versions, t.USER_SEQUENCES.name: seq_v, t.USER_REPRESENTATIONS.name: rep_v},
                "quarantine": labels.counts})
            write_quarantine(tables, inputs.validations, args.date, JOB, ctx.run_id)
        finally:
            release(*inputs.validations)
        stats = td.describe_examples(tables.read(td.TRANSFER_EXAMPLES, dt=ds, version=res.version))
        dropped = labels.total - labels.quarantined - sum(stats.rows.values())
        files = td.transfer_files(tables, ds, res.version)
        # RA retrains the base model's own tasks: a hybrid base reads its side inputs from the hybrid examples
        own = t.HYBRID_EXAMPLES if base.model.spec.reads_side else t.TRAINING_EXAMPLES
        original = td.original_training_data(tables, snap, own) if "ra" in methods else None
        results = tr.run_methods(methods, files, base.model, stats.rep_dim, original, settings, stats.fingerprints)
        params = {"date": ds, "days": days, "snapshot_dt": snap, "example_days": ",".join(window.example_days),
                  "methods": ",".join(methods), "validation_share": tc.validation_share, "test_share": tc.test_share,
                  "seed": tc.seed, "epochs": tc.epochs, "patience": tc.patience,
                  "selection": "best validation AUC epoch", "ft_tower_lr_scale": tc.ft_tower_lr_scale,
                  "price_match": tc.price_match, "head_input": tc.head_input,
                  "rt_lr": settings.rt_step, "rt_epochs": settings.rt_cap,
                  "batch_size": tc.batch_size, "lr": tc.lr, "optimizer": "adam", "ra_mix": ra_mix,
                  "ra_weighting": cfg.training.weighting.kind, "base_model_version": base.version,
                  "rep_model_versions": ",".join(stats.rep_model_versions), "rep_dim": stats.rep_dim,
                  "transfer_examples_version": res.version, "train_rows": stats.rows["train"],
                  "valid_rows": stats.rows["valid"], "test_rows": stats.rows["test"],
                  "dropped_not_in_snapshot": dropped,
                  "original_training_days": ",".join(original.days) if original else "",
                  "original_training_rows": original.rows if original else 0}
        context = {"title": f"transfer-{ds}: shop preference, {window.describe()}", **params,
                   "examples": stats.describe(), "inputs": lines}
        table = tr.log_comparison(tracker, results, params, context)
    versions = set(stats.rep_model_versions)
    note = "" if versions == {base.version} else (
        f" (note: the published vectors of {snap} come from model version(s) {', '.join(sorted(versions))}, "
        f"FT starts from version {base.version})")
    return "\n".join([
        *lines,
        f"wrote {res.describe()} dt={ds}: {window.describe()}; {stats.describe()}; {dropped:,} examples dropped "
        f"(user not in the snapshot){note}",
        table,
        f"{JOB}: compared {', '.join(m.upper() for m in methods)} (epochs chosen on validation, test scored once) "
        f"in MLflow run {tracker.run_id} (transfer-{ds}) under {tables.root}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "")
    p.add_argument("--days", type=int, default=None,
                   help=f"days of examples before and including --date (default transfer.days or "
                        f"{tr.DEFAULT_DAYS}); the snapshot day is --date minus this")
    p.add_argument("--model-version", default=None,
                   help="registered version FT starts from (and RS/RA take the architecture of); default: the "
                        "version that published the snapshot day's vectors, which RT reads")
    p.add_argument("--methods", nargs="+", choices=tr.METHODS, default=list(tr.METHODS),
                   help="methods to compare (default all: rt ft rs ra)")
    p.add_argument("--ra-mix", type=int, default=None,
                   help=f"RA budget: original-task rows per shop row in each batch (default transfer.ra_mix or "
                        f"{tr.DEFAULT_RA_MIX})")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
