"""Per-user behaviour sequences as of the end of ``--date`` -> ``features/user_sequences``.

    spark-submit jobs/build_sequences.py --config conf/local.yaml --date 2026-11-14
    python -m jobs.build_sequences --config conf/local.yaml --date 2026-11-14

Every user with at least one valid behaviour in the look-back window
(``sequences.lookback_days`` days ending with ``--date``) gets one row: the latest
``sequences.max_len`` behaviours, oldest to newest, encoded and padded. Rejected input rows
go to ``quarantine/events``; the partition ``dt = --date`` is replaced atomically. A window
without a valid event is refused (an empty or failed upstream load must not wipe a good
partition) unless ``--allow-empty``; a date without events of its own is written with a warning.
"""
from __future__ import annotations

import argparse

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features import pipeline

JOB = "build_sequences"


def run(ctx: JobContext) -> str:
    cfg, day = ctx.cfg, ctx.args.date
    tables = get_tables(get_spark(cfg), cfg)
    res, lines = pipeline.build_user_sequences(tables, cfg, day, JOB, ctx.run_id, ctx.args.allow_empty)
    return "\n".join([*lines, f"{JOB}: wrote {res.describe()} dt={day} under {tables.root}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "")
    p.add_argument("--allow-empty", action="store_true",
                   help="replace the partition even when the look-back window holds no valid event (no users)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
