"""Encode a declared feature table for multi-task training: ``features/tabular_<name>``.

    python -m jobs.build_tabular_set --config conf/census.yaml
    spark-submit jobs/build_tabular_set.py --config conf/census.yaml --set tabular.split.seed=7

Reads ``tabular.table``, checks the declared columns and labels, splits the rows
(``tabular.split``), learns the categorical vocabularies and dense statistics on the training split
only and writes the encoded rows, by split (``features/tabular.py``). The table is replaced as a whole.
"""
from __future__ import annotations

import argparse

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features.tabular import build_tabular_set, load_tabular_set

JOB = "build_tabular_set"


def run(ctx: JobContext) -> str:
    tables = get_tables(get_spark(ctx.cfg), ctx.cfg)
    tab = ctx.cfg.tabular
    written = build_tabular_set(tables, tab, metadata={"job": JOB, "run_id": ctx.run_id})
    built = load_tabular_set(tables, tab)
    vocab = sum(len(v) for v in built.encoding.vocab.values())
    return (f"{built.describe()}; {len(tab.categorical)} categorical columns ({vocab:,} values kept), "
            f"{len(tab.dense)} dense, tasks {', '.join(x.name for x in tab.tasks)}\n{JOB}: wrote {written.describe()}")


def parser() -> argparse.ArgumentParser:
    return base_parser(JOB, __doc__ or "", date=False)


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
