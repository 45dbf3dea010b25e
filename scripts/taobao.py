"""The daily pipeline on the real Taobao log, from one command (docs/taobao.md).

    python -m scripts.taobao --config conf/taobao.yaml [--source ../shared/data/taobao_userbehavior]

The same jobs as the demo, each its own process as a scheduler runs them: the import, the
sequences of the last day, the training set of the label days (training days, then the validation
and the test day), serving statistics, a full training selected on the validation day with the
nightly job of that day, an incremental day, the nightly job of the last day, two queries, and the
champion's test metrics. Follows, PPP tiers and shop preferences have no table: those tasks (and the
transfer job, which needs shop preferences) are off.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time

from core.config import load_config
from features.taobao import DEFAULT_FOLDER, ImportSettings
from scripts.demo import run_steps

REPORTED = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10")
FIRST_USER = 100  # a user of the sample who is active on its last days
HISTORY_DAYS = 1  # label days whose lists have at least this many full days of history before them


def steps(config: str, source: str, days: list[dt.date]) -> list[list[str]]:
    """The pipeline over label days ``days`` (the import's); the first ``HISTORY_DAYS`` only add history."""
    c = ["--config", config]
    d = lambda n: days[-1 - n].isoformat()  # noqa: E731
    start = days[HISTORY_DAYS].isoformat()
    return [
        ["jobs.import_taobao_userbehavior", *c, "--source", source],
        ["jobs.build_sequences", *c, "--date", d(0)],
        ["jobs.build_training_set", *c, "--start", start, "--end", d(0)],
        ["jobs.feature_stats", *c, "--date", d(0), "--training-start", start, "--training-end", d(0)],
        ["jobs.train", *c, "--mode", "full", "--start", start, "--end", d(2)],
        ["jobs.publish_user_representations", *c, "--date", d(2)],
        ["jobs.train", *c, "--mode", "incremental", "--date", d(1)],
        ["jobs.publish_user_representations", *c, "--date", d(0)],
        ["jobs.query", *c, "tiers"],
        ["jobs.query", *c, "user", str(FIRST_USER)],
        ["jobs.query", *c, "similar", str(FIRST_USER), "--k", "5"],
        ["scripts.taobao", *c, "--report"],
    ]


def report(config: str) -> None:
    """Print the champion's test metrics, logged by its training run."""
    import mlflow

    from registry.models import ModelRegistry

    cfg = load_config(config)
    registry = ModelRegistry(cfg.mlflow)
    version = registry.champion_version()
    if version is None:
        raise SystemExit("taobao report: no champion version")
    run = mlflow.get_run(registry.client.get_model_version(registry.name, version).run_id)
    model = {k: run.data.metrics.get(f"test_{k}") for k in REPORTED}
    print(f"champion {registry.name} v{version} ({run.data.tags.get('mode')} run), next-day lists of the test day:")
    print("test: " + " ".join(f"{k}={v:.4f}" for k, v in model.items() if v is not None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/taobao.yaml")
    p.add_argument("--source", default=str(DEFAULT_FOLDER), help="the taobao_userbehavior folder or its CSV file")
    p.add_argument("--report", action="store_true", help="only print the champion's test metrics")
    args = p.parse_args()
    if args.report:
        report(args.config)
        return
    cfg = load_config(args.config)
    started = time.time()
    run_steps(steps(args.config, args.source, ImportSettings().label_days()), "taobao")
    print(f"\ntaobao pipeline finished in {time.time() - started:.0f}s; lake under {cfg.lake_root}, MLflow in "
          f"{cfg.mlflow.tracking_uri}")


if __name__ == "__main__":
    main()
