"""Point-in-time multi-task training examples for a date range -> ``features/training_examples``.

    spark-submit jobs/build_training_set.py --config conf/local.yaml --start 2026-11-01 --end 2026-11-14
    python -m jobs.build_training_set --config conf/local.yaml --start 2026-11-01 --end 2026-11-14

Tasks: ``ctr`` and ``l2r`` from ``raw/impressions``, ``follow`` from ``raw/follows``, ``ppp``
from ``raw/ppp_labels``; a task whose label table is absent is skipped with a warning. One row
per example group (an impression list, a follow impression, a tier label) with its user's
sequence as of its own ``event_time`` (strictly earlier behaviour only) and its target's
earlier-days statistics (``features/priors.py``: the week before each day of ``raw/events`` and
``raw/follows`` is read too). Splits follow the
evaluation protocol (``core/protocol.py``): the last ``training_set.test_days`` days are the
test split, the ``validation_days`` before them the validation split; purchasing-power labels
of held-out users never enter the training split. Sampling of the training split follows
``training_set.<task>`` and is recorded in the commit metadata with the splits. The
partitions ``dt`` in [start, end] are replaced in one atomic commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt

import logging
from functools import reduce
from typing import TYPE_CHECKING

from core import protocol as pr
from core.protocol import range_days
from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import DeltaTables, get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features import training_set as ts
from features.inputs import Inputs
from features.priors import POPULARITY_DAYS, search_categories
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import encode_behaviour, encode_items, encode_users

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

JOB = "build_training_set"
logger = logging.getLogger(__name__)


def run(ctx: JobContext) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    days = ts.range_days(start, end)
    tables = get_tables(get_spark(cfg), cfg)
    with tables.lease(t.TRAINING_EXAMPLES, days, JOB, ctx.run_id):  # one run per date, refused early
        return _build(ctx, tables, days)


def _build(ctx: JobContext, tables: DeltaTables, days: list[str]) -> str:
    cfg = ctx.cfg
    start, end = ctx.args.start, ctx.args.end
    split = pr.split_days(days, cfg.training_set.validation_days, cfg.training_set.test_days)
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

    parts = []
    items = encode_items(inputs.snapshot(t.ITEMS), seq)
    users = encode_users(inputs.snapshot(t.USERS))
    # the heads' earlier-days statistics (features/priors.py) read the days before the range too
    events = inputs.partitions(t.EVENTS, ts.behaviour_days(start, end, max(seq.lookback_days, POPULARITY_DAYS)))
    if {"ctr", "l2r"} & set(tasks):
        imp = inputs.partitions(t.IMPRESSIONS, days)
        searches = search_categories(events.valid, items, seq.hash_buckets.query_token)
        parts.append(ts.impression_groups(imp.valid, items, tsc, seq, rank_dim, split, tasks, searches))
    if "follow" in tasks:
        fol = inputs.partitions(t.FOLLOWS, range_days(start - _dt.timedelta(days=POPULARITY_DAYS), end))
        labelled = fol.valid.where(fol.valid["dt"].isin(days))
        parts.append(ts.follow_rows(labelled, tsc, seq, rank_dim, split, fol.valid))
    if "ppp" in tasks:
        lab = inputs.partitions(t.PPP_LABELS, days)
        parts.append(ts.ppp_rows(lab.valid, tsc, seq, rank_dim, split))
    validations = inputs.validations
    try:
        lines = enforce_bound(tables, validations, end, JOB, ctx.run_id, cfg.quality.max_quarantine_share)
        rows = reduce(lambda a, b: a.unionByName(b), parts)
        full = ts.with_sequences(rows, encode_behaviour(events.valid), items, users, seq)
        sampling = {task: getattr(tsc, task).model_dump() for task in tasks}
        res = tables.write(full, t.TRAINING_EXAMPLES, "overwrite", replace={"dt": days}, metadata={
            "job": JOB, "run_id": ctx.run_id, "start": start.isoformat(), "end": end.isoformat(),
            "splits": split.as_dict(), "tasks": tasks, "skipped_tasks": skipped, "sampling": sampling,
            "logit_offsets": ts.sampling_offsets(tsc), "group_size": tsc.group_size,
            "ppp_user_shares": {"valid": tsc.ppp_validation_user_share, "test": tsc.ppp_test_user_share},
            "seed": tsc.seed, "inputs": inputs.versions, "max_len": seq.max_len})
        write_quarantine(tables, validations, end, JOB, ctx.run_id)
    finally:
        release(*validations)
    counts = example_counts(tables.read(t.TRAINING_EXAMPLES, dt=days, version=res.version))
    count_line = ", ".join(f"{split_}/{kind}={rows_:,} rows ({n:,} examples)"
                           for (split_, kind), (rows_, n) in sorted(counts.items()))
    skipped_line = [f"skipped tasks (label table absent): {', '.join(skipped)}"] if skipped else []
    return "\n".join([*lines, *skipped_line, f"examples: {count_line}",
                      f"{JOB}: wrote {res.describe()} dt={start}..{end} ({split.describe()})"])


def example_counts(df: "DataFrame") -> dict[tuple[str, str], tuple[int, int]]:
    """(split, kind) -> (rows, examples); impression rows count their items (a handful of rows)."""
    from pyspark.sql import functions as F

    agg = df.groupBy("split", "kind").agg(F.count(F.lit(1)).alias("rows"),
                                          F.sum(F.greatest(F.col("n_items"), F.lit(1))).alias("examples"))
    return {(r["split"], r["kind"]): (int(r["rows"]), int(r["examples"])) for r in agg.collect()}


def parser() -> argparse.ArgumentParser:
    return base_parser(JOB, __doc__ or "", date="range")


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
