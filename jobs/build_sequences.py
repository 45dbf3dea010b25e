"""Per-user behaviour sequences as of the end of ``--date`` -> ``features/user_sequences``.

    spark-submit jobs/build_sequences.py --config conf/local.yaml --date 2026-11-14
    python -m jobs.build_sequences --config conf/local.yaml --date 2026-11-14 [--full]

Every user with at least one valid behaviour in the look-back window
(``sequences.lookback_days`` days ending with ``--date``) gets one row: the latest
``sequences.max_len`` behaviours, oldest to newest, encoded and padded. The partition
``dt = --date`` is replaced atomically; so is partition ``dt = --date`` of the internal state
``features/user_sequence_state`` (per user the same latest behaviours, unencoded, with their times),
written first.

Two paths give the same rows (docs/features.md, "Incremental sequences"):

* incremental (the default when the state of the day before is usable): that state, minus the
  behaviours that left the window, plus the valid events of ``--date``, re-cut to the latest
  ``max_len`` per user; users left with no behaviour are dropped. Validates (and quarantines the
  rejected rows of) ``raw/events`` partition ``--date`` only, plus the ``raw/items`` and ``raw/users``
  snapshots; the earlier days were validated by the runs that built the state.
* full rebuild, from every partition of the window: with ``--full``, or when the state of the day
  before is missing, was built with another ``max_len``, ``lookback_days`` or encoding, or when a
  ``raw/events`` partition of a day both windows share has other files than when that state was built
  (a reload). A summary line says which. Validates every partition of the window and both snapshots.

Item attributes (current ``raw/items``), the profile, the time buckets (relative to the end of
``--date``) and ``user_dense`` are recomputed on both paths. The quarantined share bound
(``quality.max_quarantine_share``) applies to what the path read. A window without a valid event (no
user left) is refused (an empty or failed upstream load must not wipe a good partition) unless
``--allow-empty``; a date without events of its own is written with a warning.
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
    res, lines = pipeline.build_user_sequences(tables, cfg, day, JOB, ctx.run_id, ctx.args.allow_empty,
                                               ctx.args.full)
    return "\n".join([*lines, f"{JOB}: wrote {res.describe()} dt={day} under {tables.root}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "")
    p.add_argument("--allow-empty", action="store_true",
                   help="replace the partition even when the look-back window holds no valid event (no users)")
    p.add_argument("--full", action="store_true",
                   help="rebuild from the whole look-back window instead of advancing the state of the day before")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
