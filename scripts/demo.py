"""The README's main command: the whole daily pipeline on the embedded default.

Each step runs as its own process, exactly as a scheduler would run it
(``python -m jobs.<job> --config ... --date ...``), and stops the demo at the first failure.
The demo ends with the champion's test metrics next to the demo world's oracle scores.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
import time

from core.config import load_config
from features.demo_world import USER_ID0

FIRST_USER = USER_ID0 + 42
WARM_UP_DAYS = 4  # the first days only build up histories (users start with none)
DAILY_DEMO_STEPS = ("train", "publish")
REPORTED = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy")


def daily_steps(c: list[str], days: list[str], user: int, hybrid: bool = False) -> list[list[str]]:
    """The pipeline's jobs from the sequences to the queries (the day after the full training through
    ``jobs.daily``, the command a scheduler runs). ``c``: the config options of every job;
    ``days``: the training set's days in order (the last is the test day, the one before the validation
    day); ``user``: the user the queries look up; ``hybrid``: ``training.hybrid`` (the hybrid model's
    examples are built beside the training set)."""
    start, d2, d0 = days[0], days[-3], days[-1]  # d1 = days[-2], the validation day, trains in the daily run
    return [
        ["jobs.build_sequences", *c, "--date", d0],
        ["jobs.build_training_set", *c, "--start", start, "--end", d0],
        *([["jobs.build_hybrid_examples", *c, "--start", start, "--end", d0]] if hybrid else []),
        ["jobs.feature_stats", *c, "--date", d0, "--training-start", start, "--training-end", d0],
        ["jobs.train", *c, "--mode", "full", "--start", start, "--end", d2],
        ["jobs.publish_user_representations", *c, "--date", d2],
        # the unit a scheduler runs each day (jobs/daily.py): on day d0 incremental training from the champion on
        # d1 (the day before the test day) gated on d0, then publishing d0. The sequences, training set and
        # statistics of d0 were built above for the full training, so this day runs the last two steps.
        ["jobs.daily", *c, "--date", d0, "--set", f"daily.steps=[{','.join(DAILY_DEMO_STEPS)}]"],
        ["jobs.query", *c, "tiers"],
        ["jobs.query", *c, "user", str(user)],
        ["jobs.query", *c, "similar", str(user), "--k", "5"],
    ]


def steps(config: str, first: dt.date, last: dt.date) -> list[list[str]]:
    """The daily pipeline over the demo world: features of the last day, a training set of the
    days after the warm-up (training days, then the validation and the test day), full training on
    the training days with selection on the validation day and that day's nightly job, the daily run
    of the last day (incremental training on the validation day, gated on the test day, and the nightly
    job of the last day), queries, the transfer comparison, and the report of the champion's test
    metrics against the oracle."""
    c = ["--config", config]
    start = first + dt.timedelta(days=WARM_UP_DAYS)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((last - start).days + 1)]
    return [
        ["jobs.generate_demo_world", *c, "--oracle"],
        *daily_steps(c, days, FIRST_USER, load_config(config).training.hybrid),
        ["jobs.transfer", *c, "--date", last.isoformat()],
        ["scripts.demo", *c, "--report"],
    ]


def report(config: str) -> None:
    """Print the champion's test metrics (logged by its training run) next to the oracle's on the same
    test day."""
    import mlflow

    from core import tables as t
    from core.delta import get_tables
    from core.spark import get_spark
    from features.oracle import oracle_scores
    from registry.models import ModelRegistry

    cfg = load_config(config)
    registry = ModelRegistry(cfg.mlflow)
    version = registry.champion_version()
    if version is None:
        raise SystemExit("demo report: no champion version")
    run = mlflow.get_run(registry.client.get_model_version(registry.name, version).run_id)
    tables = get_tables(get_spark(cfg), cfg)
    test_days = tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]["test"]
    oracle = oracle_scores(tables, test_days, cfg.training_set)
    model = {k: run.data.metrics.get(f"test_{k}") for k in REPORTED}
    print(f"champion {registry.name} v{version} ({run.data.tags.get('mode')} run), test day {', '.join(test_days)}:")
    print("test:   " + " ".join(f"{k}={v:.4f}" for k, v in model.items() if v is not None))
    print("oracle: " + " ".join(f"{k}={oracle[k]:.4f}" for k in REPORTED if k in oracle))


def run_steps(steps: list[list[str]], name: str) -> None:
    """Run each step as its own process (``python -m <module> <args>``) with its time; exit at the first
    failure with the step's exit code."""
    for step in steps:
        cmd = [sys.executable, "-m", step[0], *(["--log-level", "WARNING"] if step[0].startswith("jobs.") else []),
               *step[1:]]
        print(f"\n$ python -m {' '.join(shlex.quote(a) for a in step)}", flush=True)
        t0 = time.time()
        res = subprocess.run(cmd)
        if res.returncode != 0:
            print(f"{name} stopped: step {step[0]} failed (exit {res.returncode})", file=sys.stderr)
            sys.exit(res.returncode)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--report", action="store_true", help="only print the champion's test metrics vs the oracle")
    args = p.parse_args()
    if args.report:
        report(args.config)
        return
    cfg = load_config(args.config)
    first = cfg.demo.start_date
    last = first + dt.timedelta(days=cfg.demo.days - 1)
    started = time.time()
    run_steps(steps(args.config, first, last), "demo")
    print(f"\ndemo finished in {time.time() - started:.0f}s; lake under {cfg.lake_root}, MLflow in "
          f"{cfg.mlflow.tracking_uri}\nbrowse the runs: .venv/bin/mlflow ui --backend-store-uri "
          f"{cfg.mlflow.tracking_uri}")


if __name__ == "__main__":
    main()
