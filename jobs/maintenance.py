"""Lake maintenance: remove what killed writes left behind in the tables' folders.

    spark-submit jobs/maintenance.py --config conf/local.yaml clean [--table NAME ...] [--min-age-hours 24] [--dry-run]
    python -m jobs.maintenance --config conf/local.yaml clean --dry-run

A write of the embedded engine (``delta.engine: rs``) stages its Parquet files in
``<table>/_staging/<id>``, moves them into the partition folders and then commits them in one
Delta transaction. A job killed before the commit leaves the staging folder, or files in a
partition folder that no version references. Delta readers never see either; a plain Parquet
reader of the folder would. ``clean`` removes both, for every Delta table under the lake root
(or the ``--table`` names given), when they are older than ``--min-age-hours`` (a younger one may
belong to a write that is still running). Files of earlier versions are kept: time travel keeps
working. ``--dry-run`` lists what would go. Schedule it daily, after the day's jobs.
"""
from __future__ import annotations

import argparse

from pyspark.sql import types as T

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from core.tables import TableSpec

JOB = "maintenance"


def run(ctx: JobContext) -> str:
    args = ctx.args
    if args.min_age_hours < 0:
        raise PlatformError(f"--min-age-hours must be at least 0, got {args.min_age_hours}")
    tables = get_tables(get_spark(ctx.cfg), ctx.cfg)
    known = tables.table_names()
    names = args.table or known
    missing = [n for n in names if n not in known]
    if missing:
        raise PlatformError(f"no Delta table {', '.join(missing)} under {tables.root} (tables: {', '.join(known)})")
    lines, removed = [], 0
    for name in names:
        res = tables.clean_uncommitted(TableSpec(name, T.StructType([])), args.min_age_hours * 3600, args.dry_run)
        removed += len(res.staging_folders) + len(res.uncommitted_files)
        lines.append(res.describe())
        lines += [f"  {p}" for p in (*res.staging_folders, *res.uncommitted_files)]
    verb = "would remove" if args.dry_run else "removed"
    return "\n".join([*lines, f"{JOB}: {verb} {removed} leftover(s) in {len(names)} table(s) under {tables.root}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clean", help="remove staging folders and uncommitted files left by killed writes")
    c.add_argument("--table", action="append", help="a table's path under the lake root (repeatable; default: all)")
    c.add_argument("--min-age-hours", type=float, default=24.0,
                   help="keep anything younger (it may belong to a running write; default 24)")
    c.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
