"""Training throughput: Petastorm feeding vs the same model fed from in-memory tensors, 1 and 2 processes;
and the held-out metrics of the demo's champion next to the oracle scores of the demo world.

    .venv/bin/python -m benchmarks.bench_training --config conf/local.yaml --steps 40 \\
        --out benchmarks/results/training.md

Reads the training examples of the lake named by the config (run ``make demo`` first). Each
setting trains the default DUPN for ``--steps`` steps of ``training.batch_size`` per process
(after one warm-up epoch-start); in-memory runs first read their shard into memory (not timed).
2-process runs go through Spark's TorchDistributor (local mode, gloo).
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from pathlib import Path

import mlflow

from benchmarks.common import ROOT, write_result
from core import tables as t
from core.config import load_config
from core.delta import get_tables
from core.spark import get_spark
from registry.models import ModelRegistry
from training.datasets import serving_statistics, training_data
from training.spec import ModelSpec
from training.trainer import TrainPlan, run_training


def oracle_table() -> dict[str, float]:
    text = (ROOT / "docs" / "demo_world.md").read_text()
    block = text.split("<!-- oracle-table:begin -->")[1].split("<!-- oracle-table:end -->")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([0-9.]+) \|$", block, re.M)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cfg = load_config(args.config)
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    held = meta["holdout_days"]
    days = [d for d in tables.partitions(t.TRAINING_EXAMPLES) if d not in held]
    data = training_data(tables, days, held, cfg.training.tasks)
    stats = serving_statistics(tables, dt.date.fromisoformat(held[-1]), cfg.inputs.rank_features_dim)
    spec = ModelSpec.from_config(cfg, tasks=data.tasks, norm=stats.norm)
    rows = []
    for procs in (1, 2):
        for preload in (True, False):
            training = cfg.training.model_copy(update={"max_steps_per_epoch": args.steps})
            plan = TrainPlan(spec=spec.to_dict(), training=training, train_files=data.train_files,
                             eval_files=data.eval_files[:1], epochs=1, max_steps_per_epoch=args.steps,
                             preload=preload)
            t0 = time.time()
            res = run_training(plan, procs, use_distributor=procs > 1)
            rate = res.train_samples / res.train_seconds
            rows.append((procs, "in-memory tensors" if preload else "Petastorm", rate, res.train_samples,
                         time.time() - t0))
            print(rows[-1], flush=True)
    lines = ["| processes | feeding | samples/s | samples | wall s (incl. start-up) | Petastorm / in-memory |",
             "|---:|---|---:|---:|---:|---:|"]
    mem = {r[0]: r[2] for r in rows if r[1] == "in-memory tensors"}
    for procs, feed, rate, n, wall in rows:
        lines.append(f"| {procs} | {feed} | {rate:,.0f} | {n:,} | {wall:.0f} | {rate / mem[procs]:.2f} |")
    table = "\n".join(lines)
    metrics_table = ""
    reg = ModelRegistry(cfg.mlflow)
    version = reg.champion_version()
    if version:
        run = mlflow.get_run(reg.client.get_model_version(reg.name, version).run_id)
        oracle = oracle_table()
        mlines = [f"Champion {reg.name} v{version} (MLflow run {run.info.run_id}, mode "
                  f"{run.data.params.get('mode')}, eval days {run.data.params.get('eval_days')}):", "",
                  "| metric | model (held out) | oracle | model / oracle |", "|---|---:|---:|---:|"]
        for name, ov in oracle.items():
            mv = run.data.metrics.get(f"holdout_{name}")
            if mv is not None:
                mlines.append(f"| {name} | {mv:.4f} | {ov:.4f} | {mv / ov:.2f} |")
        metrics_table = "\n".join(mlines)
    print(table)
    print(metrics_table)
    write_result(args.out, f"python -m benchmarks.bench_training --config {args.config} --steps {args.steps}",
                 f"## Feeding\n\n{table}\n\n## Held-out metrics vs oracle\n\n{metrics_table}")


if __name__ == "__main__":
    main()
