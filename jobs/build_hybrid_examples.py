"""The training examples with the hand-crafted summaries beside them -> ``features/hybrid_examples``
(what training reads when ``training.hybrid`` is on; ``features/hybrid.py``).

    python -m jobs.build_hybrid_examples --config conf/local.yaml --start 2026-11-05 --end 2026-11-14
    spark-submit jobs/build_hybrid_examples.py --config conf/local.yaml --start ... --end ...

Every row of ``features/training_examples`` dt in [start, end] (its newest version, which must hold every
day: run build_training_set first), with the summaries of ``features.gbdt.SIDE_COLUMNS`` of each
impression slot (``slot_side``) and follow row (``row_side``), computed as build_gbdt_features computes
them: from behaviour strictly before each example and popularity of earlier days only. The commit
metadata repeats the training set's (splits, tasks, sampling, logit offsets) and adds ``side``: the
columns, the training-split quantiles the model ranks them at, and the training set's version. The
partitions are replaced in one atomic commit.
"""
from __future__ import annotations

import argparse
from typing import Any

from pyspark import StorageLevel

from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features.gbdt import SIDE_COLUMNS
from features.hybrid import pack_side, side_knots
from features.training_set import range_days
from jobs.build_gbdt_features import examples_version, hand_crafted

JOB = "build_hybrid_examples"
# the training set's commit metadata that training reads, repeated in the hybrid examples' commits
KEPT = ("splits", "tasks", "skipped_tasks", "sampling", "logit_offsets", "group_size", "ppp_user_shares", "seed",
        "max_len")


def run(ctx: JobContext) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    days = range_days(start, end)
    tables = get_tables(get_spark(cfg), cfg)
    version = examples_version(tables, days)
    meta = tables.metadata(t.TRAINING_EXAMPLES, version)
    group_size = int(meta.get("group_size") or cfg.training_set.group_size)
    columns = list(SIDE_COLUMNS)
    with tables.lease(t.HYBRID_EXAMPLES, days, JOB, ctx.run_id), \
            hand_crafted(ctx, tables, days, version) as (rows, lines, versions):
        # read twice (the knots, then the rows packed): computed once
        side = rows.select("example_id", "task", "split", *columns).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            knots = side_knots(side, columns, cfg.training.model.side_bins)
            examples = tables.read(t.TRAINING_EXAMPLES, dt=days, version=version)
            out = t.HYBRID_EXAMPLES.conform(pack_side(examples, side, columns, group_size))
            keep: dict[str, Any] = {k: meta[k] for k in KEPT if k in meta}
            res = tables.write(out, t.HYBRID_EXAMPLES, "overwrite", replace={"dt": days}, metadata={
                **keep, "job": JOB, "run_id": ctx.run_id, "start": start.isoformat(), "end": end.isoformat(),
                "training_examples_version": version, "inputs": versions,
                "side": {"columns": columns, "knots": knots, "training_examples_version": version}})
        finally:
            side.unpersist()
    empty = [c for c, k in zip(columns, knots) if len(k) < 2]
    note = [f"columns with fewer than two distinct training values (one value: ranked 0; none: read as missing): "
            f"{', '.join(empty)}"] if empty else []
    return "\n".join([*lines, *note, f"side inputs: {len(columns)} columns per impression slot and follow row",
                      f"{JOB}: wrote {res.describe()} dt={start}..{end} (training_examples v{version})"])


def parser() -> argparse.ArgumentParser:
    return base_parser(JOB, __doc__ or "", date="range")


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
