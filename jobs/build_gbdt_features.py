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
import datetime as _dt
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import DeltaTables, get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features import gbdt
from features.inputs import Inputs
from features.quality import enforce_bound, release
from features.sequences import encode_items, encode_users
from features.training_set import behaviour_days, range_days

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

JOB = "build_gbdt_features"


def run(ctx: JobContext) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    days = range_days(start, end)
    tables = get_tables(get_spark(cfg), cfg)
    version = examples_version(tables, days)
    with hand_crafted(ctx, tables, days, version) as (out, lines, versions):
        spec = gbdt.gbdt_spec(cfg.inputs.rank_features_dim)
        res = tables.write(out, spec, "overwrite", replace={"dt": days}, metadata={
            "job": JOB, "run_id": ctx.run_id, "start": start.isoformat(), "end": end.isoformat(),
            "training_examples_version": version, "inputs": versions,
            "splits": tables.metadata(t.TRAINING_EXAMPLES, version).get("splits")})
    counts = (tables.read(spec, dt=days, version=res.version).groupBy("split", "task").count().collect())
    line = ", ".join(f"{r['split']}/{r['task']}={r['count']:,}" for r in sorted(counts, key=lambda r: (r[0], r[1])))
    return "\n".join([*lines, f"examples: {line}", f"{JOB}: wrote {res.describe()} dt={start}..{end}"])


def examples_version(tables: DeltaTables, days: list[str]) -> int:
    """The version of ``features/training_examples`` that holds every day of ``days``.

    Raises:
        PlatformError: the table or one of the days is missing.
    """
    if not tables.exists(t.TRAINING_EXAMPLES):
        raise PlatformError("features/training_examples does not exist: run build_training_set first")
    version = tables.version(t.TRAINING_EXAMPLES)
    have = set(tables.partitions(t.TRAINING_EXAMPLES, version))
    missing = [d for d in days if d not in have]
    if missing:
        raise PlatformError(f"features/training_examples has no partition {', '.join(missing)}: run "
                            f"build_training_set --start {days[0]} --end {days[-1]}")
    return version


@contextmanager
def hand_crafted(ctx: JobContext, tables: DeltaTables, days: list[str], version: int) \
        -> Iterator[tuple["DataFrame", list[str], dict[str, Any]]]:
    """The rows of ``features/gbdt_examples`` for ``days`` of training-set ``version`` (a lazy DataFrame, to be
    written inside the block), the input-quality lines, and the versions of the inputs read. The inputs'
    validations are released when the block ends."""
    cfg = ctx.cfg
    start, end = _dt.date.fromisoformat(days[0]), _dt.date.fromisoformat(days[-1])
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
        lines = enforce_bound(tables, validations, end, ctx.job, ctx.run_id, cfg.quality.max_quarantine_share)
        events = gbdt.encoded_events(ev.valid, items, seq.hash_buckets.query_token)
        yield (gbdt.gbdt_examples(examples, events, items, imp.valid, fol.valid if fol else None, users, days,
                                  rank_dim, seq.max_tags, seq.hash_buckets), lines, inputs.versions)
    finally:
        release(*validations)


def parser() -> argparse.ArgumentParser:
    return base_parser(JOB, __doc__ or "", date="range")


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
