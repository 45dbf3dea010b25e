"""Normalisation statistics over the serving population of ``--date`` -> ``features/feature_stats``.

    spark-submit jobs/feature_stats.py --config conf/local.yaml --date 2026-11-14
    python -m jobs.feature_stats --config conf/local.yaml --date 2026-11-14 \\
        --training-start 2026-11-01 --training-end 2026-11-14

Count, mean and variance of every dense model input: user-side inputs over
``features/user_sequences`` of ``--date`` (every user the nightly job scores, unsampled),
item-side inputs over the unsampled impressions of ``--date``. Training loads them into
frozen normalisation layers. With ``--training-start/--training-end`` the same statistics
are computed over the training split of ``features/training_examples`` and the drift per
feature (standardised mean difference) is reported; the job fails, naming the features,
when a drift exceeds ``stats.drift_threshold``. The partition ``dt = --date`` is replaced.
"""
from __future__ import annotations

import argparse

from pyspark.sql import functions as F

from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import DeltaTables, get_tables
from core.errors import DataQualityError, PlatformError
from core.spark import get_spark
from features import stats as st
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import encode_items
from features.training_set import impression_slots, range_days

JOB = "feature_stats"


def run(ctx: JobContext) -> str:
    tables = get_tables(get_spark(ctx.cfg), ctx.cfg)
    with tables.lease(t.FEATURE_STATS, ctx.args.date.isoformat(), JOB, ctx.run_id):  # one run per date
        return _stats(ctx, tables)


def _stats(ctx: JobContext, tables: DeltaTables) -> str:
    cfg, day = ctx.cfg, ctx.args.date
    rank_dim = cfg.inputs.rank_features_dim
    spark = tables.spark
    inputs = Inputs(tables, day, rank_dim)
    if not tables.exists(t.USER_SEQUENCES) or day.isoformat() not in tables.partitions(t.USER_SEQUENCES):
        raise PlatformError(f"features/user_sequences has no partition dt={day}; run build_sequences --date {day}")
    seq_version = tables.version(t.USER_SEQUENCES)
    serving_seq = tables.read(t.USER_SEQUENCES, dt=day.isoformat(), version=seq_version)
    inputs.versions[t.USER_SEQUENCES.name] = seq_version
    serving = st.user_side_stats(serving_seq) + st.behaviour_price_stats(serving_seq)
    items = encode_items(inputs.snapshot(t.ITEMS), cfg.sequences)
    try:
        imp = inputs.partitions(t.IMPRESSIONS, [day.isoformat()]) if inputs.available(t.IMPRESSIONS) else None
        lines = enforce_bound(tables, inputs.validations, day, JOB, ctx.run_id, cfg.quality.max_quarantine_share)
        serving += st.category_price_stats(items)
        if imp is not None:
            rows = imp.valid.join(items.select("item_id", "log_price"), "item_id", "left").select(
                F.coalesce("log_price", F.lit(0.0)).alias("item_log_price"), "rank_features")
            serving += st.item_side_stats(rows, rank_dim)
    finally:
        release(*inputs.validations)
    frames = [st.stats_frame(spark, serving, st.SERVING, day.isoformat())]
    report = ""
    drift: dict[str, float] = {}
    if ctx.args.training_start or ctx.args.training_end:
        if not (ctx.args.training_start and ctx.args.training_end):
            raise PlatformError("give both --training-start and --training-end")
        days = range_days(ctx.args.training_start, ctx.args.training_end)
        ex = tables.read(t.TRAINING_EXAMPLES, dt=days).where(F.col("split") == "train")
        training = st.user_side_stats(ex)
        slots = impression_slots(ex, rank_dim, cfg.sequences.max_tags).where(F.col("ctr_weight") > 0)
        training += st.item_side_stats(slots, rank_dim, weight="ctr_weight")  # as trained: positives up-weighted
        frames.append(st.stats_frame(spark, training, st.TRAINING, day.isoformat()))
        drift = st.drift(serving, training)
        worst = sorted(drift.items(), key=lambda kv: -kv[1])[:5]
        report = "drift (SMD, worst first): " + ", ".join(f"{k}={v:.3f}" for k, v in worst)
    out = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    res = tables.replace_partition(out, t.FEATURE_STATS, day.isoformat(), metadata={
        "job": JOB, "run_id": ctx.run_id, "inputs": inputs.versions, "drift": drift,
        "threshold": cfg.stats.drift_threshold})
    write_quarantine(tables, inputs.validations, day, JOB, ctx.run_id)
    over = {k: v for k, v in drift.items() if v > cfg.stats.drift_threshold}
    if over:
        names = ", ".join(f"{k} ({v:.3f})" for k, v in sorted(over.items(), key=lambda kv: -kv[1]))
        raise DataQualityError(
            f"training set drifts from the serving population of {day} above stats.drift_threshold="
            f"{cfg.stats.drift_threshold}: {names}; check the training set's sampling (positive_upsample, "
            f"negative_rate, caps)")
    n_users = next((s.count for s in serving if s.feature == "user_dense[0]"), 0)
    n_cats = sum(1 for s in serving if s.feature.startswith(f"{st.CATEGORY_PRICE}["))
    n_visited = sum(1 for s in serving if s.feature.startswith(f"{st.BEHAVIOUR_CATEGORY_PRICE}["))
    return "\n".join([*lines, *([report] if report else []),
                      f"{JOB}: wrote {res.describe()} dt={day}: {len(serving) - n_cats - n_visited} features over "
                      f"{n_users:,} serving users, the mean price of {n_cats} categories in the catalogue and of "
                      f"{n_visited} in the users' behaviours"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "")
    p.add_argument("--training-start", type=parse_date, help="first day of the training set to compare")
    p.add_argument("--training-end", type=parse_date, help="last day of the training set to compare")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
