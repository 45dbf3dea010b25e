"""Hand-crafted point-in-time features of the training examples -> ``features/gbdt_examples``
(the gradient-boosted trees baseline of the comparison benchmark, ``features/gbdt.py``).

    python -m jobs.build_gbdt_features --config conf/local.yaml --start 2026-11-05 --end 2026-11-14
    spark-submit jobs/build_gbdt_features.py --config conf/local.yaml --start ... --end ...

One row per example of ``features/training_examples`` dt in [start, end] (same splits, same
labels); features use behaviour strictly before each example and popularity from earlier days
only. The partitions are replaced in one atomic commit.
"""
from __future__ import annotations

import argparse

from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features import gbdt
from features.inputs import Inputs
from features.quality import enforce_bound, release
from features.sequences import encode_items, encode_users
from features.training_set import behaviour_days, range_days

JOB = "build_gbdt_features"


def run(ctx: JobContext) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    days = range_days(start, end)
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    if not tables.exists(t.TRAINING_EXAMPLES):
        raise PlatformError("features/training_examples does not exist: run build_training_set first")
    version = tables.version(t.TRAINING_EXAMPLES)
    have = set(tables.partitions(t.TRAINING_EXAMPLES, version))
    missing = [d for d in days if d not in have]
    if missing:
        raise PlatformError(f"features/training_examples has no partition {', '.join(missing)}: run "
                            f"build_training_set --start {start} --end {end}")
    seq, rank_dim = cfg.sequences, cfg.inputs.rank_features_dim
    inputs = Inputs(tables, end, rank_dim)
    examples = tables.read(t.TRAINING_EXAMPLES, dt=days, version=version)
    items = encode_items(inputs.snapshot(t.ITEMS), seq)
    users = encode_users(inputs.snapshot(t.USERS))
    history = behaviour_days(start, end, seq.lookback_days)
    ev = inputs.partitions(t.EVENTS, history)
    imp = inputs.partitions(t.IMPRESSIONS, history)
    fol = inputs.partitions(t.FOLLOWS, history) if inputs.available(t.FOLLOWS) else None
    validations = inputs.validations
    try:
        lines = enforce_bound(tables, validations, end, JOB, ctx.run_id, cfg.quality.max_quarantine_share)
        events = gbdt.encoded_events(ev.valid, items, seq.hash_buckets.query_token)
        out = gbdt.gbdt_examples(examples, events, items, imp.valid, fol.valid if fol else None, users, days,
                                 rank_dim, seq.max_tags, seq.hash_buckets)
        spec = gbdt.gbdt_spec(rank_dim)
        res = tables.write(out, spec, "overwrite", replace={"dt": days}, metadata={
            "job": JOB, "run_id": ctx.run_id, "start": start.isoformat(), "end": end.isoformat(),
            "training_examples_version": version, "inputs": inputs.versions,
            "splits": tables.metadata(t.TRAINING_EXAMPLES, version).get("splits")})
    finally:
        release(*validations)
    counts = (tables.read(spec, dt=days, version=res.version).groupBy("split", "task").count().collect())
    line = ", ".join(f"{r['split']}/{r['task']}={r['count']:,}" for r in sorted(counts, key=lambda r: (r[0], r[1])))
    return "\n".join([*lines, f"examples: {line}", f"{JOB}: wrote {res.describe()} dt={start}..{end}"])


def parser() -> argparse.ArgumentParser:
    return base_parser(JOB, __doc__ or "", date="range")


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
