"""Write a synthetic world into ``raw/`` (every input table of CONTRACT.md) plus ``raw/_truth/``.

    spark-submit jobs/generate_demo_world.py --config conf/local.yaml [--date 2026-11-14]
    python -m jobs.generate_demo_world --config conf/local.yaml --set demo.n_users=5000

Deterministic for ``demo.seed`` (and the rest of ``demo.*``). ``--date`` (optional) is the
last day of the world; by default ``demo.start_date + demo.days - 1``. Every table is
replaced as a whole.
"""
from __future__ import annotations

import argparse

import datetime as _dt

from core.cli import JobContext, base_parser, main_entry
from core.delta import get_tables
from core.spark import get_spark
from features.demo_world import generate_world
from features.oracle import oracle_scores

JOB = "generate_demo_world"


def run(ctx: JobContext) -> str:
    demo = ctx.cfg.demo
    if ctx.args.date is not None:
        demo = demo.model_copy(update={"start_date": ctx.args.date - _dt.timedelta(days=demo.days - 1)})
    spark = get_spark(ctx.cfg)
    tables = get_tables(spark, ctx.cfg)
    frames = generate_world(spark, demo, ctx.cfg.inputs.rank_features_dim)
    meta = {"job": JOB, "run_id": ctx.run_id, "seed": demo.seed, "start_date": demo.start_date.isoformat(),
            "days": demo.days, "n_users": demo.n_users}
    written = [tables.write(df, spec, "overwrite", metadata=meta) for spec, df in frames.items()]
    last = demo.start_date + _dt.timedelta(days=demo.days - 1)
    lines = "\n".join(f"  {w.describe()}" for w in written)
    oracle = ""
    if ctx.args.oracle:
        test = [(last - _dt.timedelta(days=i)).isoformat() for i in range(ctx.cfg.training_set.test_days)]
        scores = oracle_scores(tables, test, ctx.cfg.training_set)
        oracle = f"\noracle scores on the test day(s) {','.join(sorted(test))} (PPP: the held-out test users): " + \
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items()))
    return (f"wrote demo world seed={demo.seed} {demo.start_date}..{last} under {tables.root}:\n{lines}"
            f"{oracle}\n{JOB}: {len(written)} tables")


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date="optional")
    p.add_argument("--oracle", action="store_true",
                   help="also print the oracle scores of the test day(s) (docs/demo_world.md)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
