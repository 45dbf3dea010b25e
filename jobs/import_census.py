"""Import the UCI Census-Income (KDD) file into the lake as the Delta table ``raw/census_income``.

    python -m jobs.import_census --config conf/census.yaml [--source ../shared/data/census_income_kdd]
    spark-submit jobs/import_census.py --config conf/census.yaml

Every row of the file is kept (99,762), ``NA`` values included (``features/census.py``); the table
is replaced as a whole. The data's terms allow research use, not redistribution: the lake is not
part of the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features.census import CENSUS_INCOME, DEFAULT_FOLDER, census_frame, read_census

JOB = "import_census"


def run(ctx: JobContext) -> str:
    frame, digest = read_census(Path(ctx.args.source))
    spark = get_spark(ctx.cfg)
    tables = get_tables(spark, ctx.cfg)
    written = tables.write(census_frame(spark, frame), CENSUS_INCOME, "overwrite",
                           metadata={"job": JOB, "run_id": ctx.run_id, "source_sha256": digest,
                                     "source": str(ctx.args.source)})
    return f"{JOB}: wrote {written.describe()} from {ctx.args.source} (sha256 {digest[:12]})"


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    p.add_argument("--source", default=str(DEFAULT_FOLDER),
                   help="the census_income_kdd folder (census-income.test.gz and columns.txt)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
