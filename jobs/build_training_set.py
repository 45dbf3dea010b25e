"""Point-in-time multi-task training examples for a date range -> ``features/training_examples``.

    spark-submit jobs/build_training_set.py --config conf/local.yaml --start 2026-11-01 --end 2026-11-14
    python -m jobs.build_training_set --config conf/local.yaml --start 2026-11-01 --end 2026-11-14

Tasks: ``ctr`` and ``l2r`` from ``raw/impressions``, ``follow`` from ``raw/follows``, ``ppp``
from ``raw/ppp_labels``; a task whose label table is absent is skipped with a warning. Each
example carries its user's sequence as of its own ``event_time`` (strictly earlier behaviour
only). The last ``training_set.holdout_days`` days form the held-out split (unsampled);
sampling of the training split follows ``training_set.<task>`` and is recorded in the commit
metadata. The partitions ``dt`` in [start, end] are replaced in one atomic commit.
"""
from __future__ import annotations

import argparse

import logging
from functools import reduce

from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features import training_set as ts
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import encode_behaviour, encode_items, encode_users

JOB = "build_training_set"
logger = logging.getLogger(__name__)


def run(ctx: JobContext) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    if end < start:
        raise PlatformError(f"--end {end} is before --start {start}")
    days = ts.range_days(start, end)
    holdout = ts.holdout_days(days, cfg.training_set)
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    inputs = Inputs(tables, end, cfg.inputs.rank_features_dim)
    tsc, seq, rank_dim = cfg.training_set, cfg.sequences, cfg.inputs.rank_features_dim
    wanted = [task for task in cfg.training.tasks if getattr(tsc, task).enabled]
    sources = {"ctr": t.IMPRESSIONS, "l2r": t.IMPRESSIONS, "follow": t.FOLLOWS, "ppp": t.PPP_LABELS}
    skipped = [task for task in wanted if not inputs.available(sources[task])]
    for task in skipped:
        logger.warning("task %s disabled: its label table %s does not exist", task, sources[task].name)
    tasks = [task for task in wanted if task not in skipped]
    if not tasks:
        raise PlatformError(f"no task can be built: label tables of {wanted} are all absent")

    validations = []
    parts = []
    if {"ctr", "l2r"} & set(tasks):
        imp = inputs.partitions(t.IMPRESSIONS, days)
        validations.append(imp)
        parts += ts.impression_examples(imp.valid, tsc, seq, rank_dim, holdout, tasks)
    if "follow" in tasks:
        fol = inputs.partitions(t.FOLLOWS, days)
        validations.append(fol)
        parts.append(ts.follow_examples(fol.valid, tsc, seq, rank_dim, holdout))
    if "ppp" in tasks:
        lab = inputs.partitions(t.PPP_LABELS, days)
        validations.append(lab)
        parts.append(ts.ppp_examples(lab.valid, tsc, seq, rank_dim, holdout))
    events = inputs.partitions(t.EVENTS, ts.behaviour_days(start, end, seq.lookback_days))
    validations.append(events)
    items = encode_items(inputs.snapshot(t.ITEMS), seq)
    users = encode_users(inputs.snapshot(t.USERS))
    try:
        lines = enforce_bound(tables, validations, end, JOB, ctx.run_id, cfg.quality.max_quarantine_share)
        examples = reduce(lambda a, b: a.unionByName(b), parts)
        full = ts.with_sequences(examples, encode_behaviour(events.valid), items, users, seq)
        sampling = {task: getattr(tsc, task).model_dump() for task in tasks}
        res = tables.write(full, t.TRAINING_EXAMPLES, "overwrite", replace={"dt": days}, metadata={
            "job": JOB, "run_id": ctx.run_id, "start": start.isoformat(), "end": end.isoformat(),
            "holdout_days": holdout, "tasks": tasks, "skipped_tasks": skipped, "sampling": sampling,
            "seed": tsc.seed, "inputs": inputs.versions, "max_len": seq.max_len})
        write_quarantine(tables, validations, end, JOB, ctx.run_id)
    finally:
        release(*validations)
    written = tables.read(t.TRAINING_EXAMPLES, dt=days, version=res.version)
    counts = sorted((r["split"], r["task"], r["count"]) for r in written.groupBy("split", "task").count().collect())
    count_line = ", ".join(f"{split}/{task}={n:,}" for split, task, n in counts)
    skipped_line = [f"skipped tasks (label table absent): {', '.join(skipped)}"] if skipped else []
    return "\n".join([*lines, *skipped_line, f"examples: {count_line}",
                      f"{JOB}: wrote {res.describe()} dt={start}..{end} (holdout {', '.join(holdout)})"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    p.add_argument("--start", type=parse_date, required=True, help="first day of examples (UTC)")
    p.add_argument("--end", type=parse_date, required=True, help="last day of examples (UTC)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
