"""The daily run, the command to schedule: every step of a day in one Spark session.

    python -m jobs.daily --config conf/local.yaml --date 2026-11-14
    spark-submit --py-files dist/platform.zip jobs/daily.py --config conf/cluster.yaml --date 2026-11-14
    python -m jobs.daily --config conf/local.yaml --start 2026-11-10 --end 2026-11-14 [--continue-on-failure]

Steps of day D (``daily.steps``, in this order; ``core/daily.py`` says exactly what each runs): the
sequences of D, the training examples of the range ending with D (with ``training.hybrid``, also the
hybrid model's examples of the same build, ``jobs/build_hybrid_examples.py``), the statistics of D with the
drift check, incremental training from the champion with the promotion gate (on the day before the
test day D), publishing D with the champion after the gate. A step whose output for D exists from
the same inputs (the run log ``ops/daily_runs``, fingerprints of config and input partitions) is
skipped, so a re-run after a failure resumes at the failed step. Each step's status, time and output
version are printed at the end and appended to ``ops/daily_runs``. A range (``--start/--end``) runs
its days in order and stops at the first failed day unless ``--continue-on-failure``; a day whose
``raw/events`` partition (or a label table's, for the training set) is missing fails naming it.
On failure: exit 1 and one line naming the day, the step and the command that re-runs it.
"""
from __future__ import annotations

import argparse
from typing import Any

from core import daily
from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from jobs import (build_hybrid_examples, build_sequences, build_training_set, feature_stats,
                  publish_user_representations, train)

JOB = "daily"
STEP_JOBS = {
    "sequences": build_sequences, "training_set": build_training_set, "feature_stats": feature_stats,
    "train": train, "publish": publish_user_representations}


class DailyFailed(PlatformError):
    """A step of a day failed (the one line names it and the command that re-runs it)."""


def run(ctx: JobContext) -> str:
    args, cfg = ctx.args, ctx.cfg
    if bool(args.date) == bool(args.start or args.end) or bool(args.start) != bool(args.end):
        raise PlatformError("give --date D, or --start D1 --end D2 for a backfill")
    days = daily.span(args.date.isoformat(), args.date.isoformat()) if args.date else \
        daily.span(args.start.isoformat(), args.end.isoformat())
    tables = get_tables(get_spark(cfg), cfg)
    base = ["--config", args.config, *[x for o in args.overrides for x in ("--set", o)]]

    def registry() -> Any:  # imported late: only training and publishing need MLflow
        from registry.models import ModelRegistry

        return ModelRegistry(cfg.mlflow)

    def show(res: daily.StepResult) -> None:
        print(f"[{res.day}] {res.describe()}", flush=True)
        for line in res.summary.splitlines():
            print(f"    {line}", flush=True)

    jobs = {step: daily.StepJob(mod.JOB, mod.parser, mod.run)
            for step, mod in {**STEP_JOBS, daily.HYBRID_JOB: build_hybrid_examples}.items()}
    runner = daily.Day(tables, cfg, jobs, base, ctx.run_id, registry, show)
    reports = daily.run_days(runner, days, args.continue_on_failure)
    lines = [line for r in reports for line in r.describe()]
    not_started = [d for d in days if d not in {r.day for r in reports}]
    if not_started:
        lines.append(f"not started after the failure: {', '.join(not_started)}")
    log = f"{JOB}: run {ctx.run_id}, run log {t.DAILY_RUNS.name} v{tables.version(t.DAILY_RUNS)} under {tables.root}"
    failure = daily.failure_line(reports, days, base)
    if failure is not None:
        print("\n".join([*lines, log]), flush=True)  # the summary, also on failure
        raise DailyFailed(failure)
    return "\n".join([*lines, log])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date="optional")
    p.add_argument("--start", type=parse_date, help="first day of a backfill (with --end, instead of --date)")
    p.add_argument("--end", type=parse_date, help="last day of a backfill")
    p.add_argument("--continue-on-failure", action="store_true",
                   help="in a backfill, run the next days after a failed one (default: stop)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
