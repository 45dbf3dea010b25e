"""ESMM's claim on the demo world (issue 11): ESMM against the sample-selection-bias baseline (CVR trained on
clicked impressions only) and DIVISION (separate CTR and CTCVR models, pCVR = pCTCVR / pCTR), on the same
examples, with the oracle's scores as the ceiling.

    .venv/bin/python -m benchmarks.bench_esmm --set lake_root=/tmp/bench_clone/lake \\
        --set training.torch_threads=1                                              # 3 seeds
    .venv/bin/python -m benchmarks.bench_esmm --set lake_root=... --seeds 0 \\
        --set training.max_steps_per_epoch=20 --out-dir /tmp/esmm_smoke             # a smoke run

The objectives are :mod:`training.esmm_study`'s. Every model is the configured DUPN network with the CTR task
only (``tasks [ctr]``, ``model.esmm=true``, whatever ``training.tasks`` says) and the configured training
settings (optimiser, task weighting, ``epochs`` cap, early stopping); the three models of one seed start from
the same initialisation and read the same training batches in the same order (the training, validation and
test splits of ``features/training_examples`` are read into memory once, with one reader thread, and the
training split is reshuffled per seed). Selection is on validation only (each network on the validation AUCs
of the labels it trains on, see :mod:`training.esmm_study`); the test day is scored once per run:

* CVR AUC over the clicked test impressions, CTCVR AUC and CTR AUC over all of them;
* the oracle row scores the world's own probabilities (``raw/_truth/impressions``: ``p_buy_given_click``,
  ``p_click · p_buy_given_click``, ``p_click``) on the same test day (:func:`features.oracle.oracle_scores`).

It reads the lake and never writes it: the demo world, its training set and its feature statistics must exist
(``benchmarks/bench_comparison.py`` builds them). Writes ``esmm.md`` and ``esmm.json`` (``--out-dir``,
default ``benchmarks/results``; ``--name``). No MLflow.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from benchmarks.bench_comparison import data_fingerprint, lift_share
from benchmarks.common import DUPN_ALL, ROOT, commit, machine
from core import tables as t
from core.config import Config, load_config
from core.delta import get_tables
from core.spark import get_spark
from training import evaluation as ev
from training.data import TensorBatches
from training.datasets import serving_statistics, training_data
from training.esmm_study import LABELS, MODELS, StudySplits, run_seed
from training.experiment import RunOutcome
from training.losses import slot_mask
from training.spec import ModelSpec
from training.step import prepare_torch
from training.trainer import DUPNWorkload

logger = logging.getLogger("bench_esmm")

TASKS = ("ctr",)
COLUMNS = ("cvr_auc", "ctcvr_auc", "ctr_auc")
HEAD = {"cvr_auc": "CVR AUC (clicked test impressions)", "ctcvr_auc": "CTCVR AUC (all test impressions)",
        "ctr_auc": "CTR AUC"}
SHORT = {"esmm": "ESMM", "ssb": "the SSB baseline", "division": "DIVISION"}
SELECTION = {"esmm": "mean of validation CTR and CTCVR AUC (the platform's selection score)",
             "ssb": "mean of validation CTR and CVR AUC",
             "division": "the CTR model on validation CTR AUC, the CTCVR model on validation CTCVR AUC"}
MODEL_SETTINGS = ("lstm_hidden", "attention_hidden", "pooled_dim", "representation_dim", "head_hidden", "item_dim",
                  "architecture", "recency_interests")


# ---------------------------------------------------------------------- data
def read_splits(spec: ModelSpec, cfg: Config, train_files: Sequence[str], valid_files: Sequence[str],
                test_files: Sequence[str]) -> StudySplits:
    """The impression rows of the three splits, read into memory once in a deterministic order."""
    training = cfg.training.model_copy(update={"deterministic": True})
    work = DUPNWorkload(spec)
    return StudySplits(train_rows=TensorBatches.collect(work.train_source(training, train_files)),
                       valid=TensorBatches.collect(work.eval_source(training, valid_files)),
                       test=TensorBatches.collect(work.eval_source(training, test_files)))


def split_counts(batches: TensorBatches) -> dict[str, int]:
    """Rows (example groups), impressions, clicks and buys of one in-memory split."""
    tensors = batches.tensors
    real = slot_mask(tensors)
    return {"rows": batches.n, "impressions": int(real.sum()),
            "clicks": int(((tensors["label_click"] > 0.5) & real).sum()),
            "buys": int(((tensors["label_buy"] > 0.5) & real).sum())}


# ---------------------------------------------------------------------- reporting
def summaries(outcomes: Mapping[str, Sequence[RunOutcome]]) -> dict[str, dict[str, ev.Summary]]:
    return {m: {c: ev.summarize(o.test.get(c, math.nan) for o in runs) for c in COLUMNS}
            for m, runs in outcomes.items()}


VERDICT = {">": "better than", "<": "worse than", "≈": "within noise of", "?": "not comparable with"}


def verdict(a: ev.Summary, b: ev.Summary) -> tuple[str, str]:
    """The mark of a vs b (:func:`training.evaluation.compare`) and a sentence with Δ mean and 2 standard errors."""
    mark = ev.compare(a, b)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n) if a.n and b.n else math.nan
    return mark, f"Δ mean {a.mean - b.mean:+.4f}, 2 standard errors {2 * se:.4f}"


def markdown(outcomes: Mapping[str, Sequence[RunOutcome]], oracle: Mapping[str, float],
             context: Mapping[str, Any]) -> str:
    s = summaries(outcomes)
    seeds = context["seeds"]
    counts = context["test_counts"]
    lines = [
        "# ESMM's claim on the demo world: ESMM vs the SSB baseline vs DIVISION", "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}; date {context['date']}; commit {context['commit']}.  ",
        f"Compute: {context['train_minutes']:.1f} min of training summed over the runs; the whole benchmark "
        f"{context['cpu_minutes']:.1f} min of CPU time (this Python process; Spark's JVM, which scores the oracle, "
        f"not counted) in {context['wall_minutes']:.1f} min wall "
        f"(torch threads {context['settings']['torch_threads']}).  ",
        f"Data: {context['data']} (fingerprint: {context['data_fingerprint']}).  ",
        f"Test day {context['test_days']}: {counts['impressions']:,} impressions, {counts['clicks']:,} clicks, "
        f"{counts['buys']:,} buys.  ",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in context["settings"].items()) + ".  ",
        *([f"Note: {context['note']}  "] if context.get("note") else []), "",
        "Every model is the same DUPN network with the CTR task only (`tasks [ctr]`, `model.esmm=true`), trained "
        "on the same examples (read once; per seed the same initialisation and the same batch order for every "
        "model), under the configured optimiser and task weighting. Selection on the validation day only; the "
        "test day is scored once per run. Selection rule:", "",
        *[f"* {LABELS[m]}: {SELECTION[m]}" for m in outcomes], "",
        "DIVISION's pCVR = pCTCVR / pCTR clipped to [0, 1]; pCTCVR is its CTCVR model's probability. ESMM's and "
        "the SSB baseline's pCTCVR = pCTR · pCVR.", "",
        f"Each cell: test mean ± std over the seeds {', '.join(str(x) for x in seeds)}.", "",
        "| model | " + " | ".join(HEAD[c] for c in COLUMNS) + " | train min | epochs chosen | best at cap |",
        "|---|" + "---:|" * (len(COLUMNS) + 3)]
    for m, runs in outcomes.items():
        parts = [p for o in runs for p in o.extra.get("parts", {}).values()]
        epochs = ev.summarize(p["selected_epoch"] for p in parts)
        cap = sum(1 for p in parts if p["at_cap"])
        minutes = ev.summarize(o.train_seconds / 60 for o in runs)
        lines.append(f"| {LABELS[m]} | " + " | ".join(s[m][c].describe() for c in COLUMNS) +
                     f" | {minutes.describe(1)} | {epochs.describe(2)} | {cap}/{len(parts)} |")
    lines.append("| oracle: the world's own probabilities | " +
                 " | ".join(f"{oracle[c]:.4f}" if c in oracle else "–" for c in COLUMNS) + " | | | |")
    lines += ["", "*epochs chosen*: the epoch fraction of the selected validation scoring (DIVISION: over both of "
              "its networks); *best at cap*: networks whose best scoring was their last one (still improving "
              "when the epoch cap stopped them)."]
    lines += ["", "## Share of the oracle's lift over chance", "", "(AUC - 0.5) / (oracle AUC - 0.5).", "",
              "| model | " + " | ".join(HEAD[c] for c in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for m in outcomes:
        lines.append(f"| {LABELS[m]} | " + " | ".join(
            f"{lift_share(s[m][c].mean, oracle[c]):.0%}" if c in oracle and s[m][c].n else "–" for c in COLUMNS)
            + " |")
    if "esmm" in outcomes:
        lines += ["", "## Does ESMM beat the others beyond noise?", "",
                  "`>` better beyond noise, `<` worse beyond noise, `≈` within noise: |Δ mean| ≤ 2 standard errors "
                  "of the seeds (`training/evaluation.py:compare`).", "",
                  "| ESMM vs | " + " | ".join(HEAD[c] for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        others = [m for m in outcomes if m != "esmm"]
        for m in others:
            lines.append(f"| {LABELS[m]} | " + " | ".join(
                "{} ({})".format(*verdict(s["esmm"][c], s[m][c])) for c in COLUMNS) + " |")
        lines.append("")
        for m in others:
            mark, detail = verdict(s["esmm"]["cvr_auc"], s[m]["cvr_auc"])
            lines.append(f"* ESMM's CVR AUC ({s['esmm']['cvr_auc'].describe()}) is **{VERDICT[mark]}** "
                         f"{SHORT[m]}'s ({s[m]['cvr_auc'].describe()}): {detail}.")
        if len(seeds) < 2:
            lines.append("* With one seed every difference counts as noise.")
    if "division" in outcomes:
        clipped = ev.summarize(o.extra.get("test_share_clipped", math.nan) for o in outcomes["division"])
        lines += ["", f"DIVISION: share of test impressions whose pCTCVR exceeds pCTR (pCVR clipped to 1): "
                  f"{clipped.describe()}."]
    lines += ["", "## Per seed", "", "| model | seed | " + " | ".join(HEAD[c] for c in COLUMNS) +
              " | validation (selected) | train s |", "|---|---:|" + "---:|" * len(COLUMNS) + "---|---:|"]
    for m, runs in outcomes.items():
        for o in runs:
            valid = ", ".join(f"{k} {v:.4f}" for k, v in o.valid.items() if k in COLUMNS)
            lines.append(f"| {SHORT[m]} | {o.seed} | " +
                         " | ".join(f"{o.test.get(c, math.nan):.4f}" for c in COLUMNS) +
                         f" | {valid} | {o.train_seconds:.0f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (e.g. lake_root=/tmp/bench_clone/lake, training.torch_threads=1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="esmm", help="results file names (<name>.md, <name>.json)")
    p.add_argument("--note", default="", help="a line printed under the table's header")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started, cpu_started = time.time(), time.process_time()
    cfg = load_config(args.config, [*DUPN_ALL, *args.overrides])  # DUPN-all's heads, as esmm.md was measured
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    splits = tables.last_metadata(t.TRAINING_EXAMPLES).get("splits") or {}
    if not splits.get("train"):
        raise SystemExit("bench_esmm: features/training_examples records no splits; build the demo world's "
                         "training set first (benchmarks/bench_comparison.py prepares it)")
    data = training_data(tables, splits["train"], TASKS)
    stats = serving_statistics(tables, dt.date.fromisoformat(data.test_days[-1]), cfg.inputs.rank_features_dim)
    spec = ModelSpec.from_config(cfg, tasks=TASKS, logit_offsets=data.logit_offsets,
                                 **stats.model_inputs(cfg.training.model.price_reference))
    from features.oracle import oracle_scores

    oracle = oracle_scores(tables, data.test_days, cfg.training_set)
    logger.info("oracle on %s: %s", data.test_days, {c: round(oracle[c], 4) for c in COLUMNS})
    spark.stop()  # the rest reads Parquet files through Petastorm
    prepare_torch(cfg.training.torch_threads or torch.get_num_threads())  # as the trainer does
    memory = read_splits(spec, cfg, data.train_files, data.valid_files, data.test_files)
    logger.info("in memory: train %d, validation %d, test %d rows", memory.train_rows.n, memory.valid.n,
                memory.test.n)
    outcomes: dict[str, list[RunOutcome]] = {m: [] for m in args.models}
    for seed in args.seeds:
        for m, outcome in run_seed(spec, cfg.training, data, memory, seed, args.models).items():
            outcomes[m].append(outcome)
    tc = cfg.training
    command = "python -m benchmarks.bench_esmm " + " ".join(argv if argv is not None else sys.argv[1:])
    context: dict[str, Any] = {
        "command": command.strip(), "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(),
        "wall_minutes": (time.time() - started) / 60, "cpu_minutes": (time.process_time() - cpu_started) / 60,
        "train_minutes": sum(o.train_seconds for runs in outcomes.values() for o in runs) / 60,
        "seeds": args.seeds, "note": args.note,
        "data": f"{data.describe()} of the demo world (seed {cfg.demo.seed}, {cfg.demo.n_users:,} users), "
                f"impression rows only",
        "data_fingerprint": data_fingerprint(data), "test_days": ", ".join(data.test_days),
        "test_counts": split_counts(memory.test), "train_counts": split_counts(memory.train_rows),
        "settings": {
            "epochs cap": tc.epochs, "early stopping": f"{tc.early_stopping.evals_per_epoch} scorings per epoch, "
            f"patience {tc.early_stopping.patience}", "max_steps_per_epoch": tc.max_steps_per_epoch,
            "optimizer": f"{tc.optimizer} lr {tc.lr}", "batch_size": tc.batch_size,
            "weighting": tc.weighting.kind, "torch_threads": tc.torch_threads,
            **{f"model.{k}": getattr(tc.model, k) for k in MODEL_SETTINGS}},
        "overrides": args.overrides,
    }
    payload = {"context": context, "oracle": oracle,
               "models": {m: {"label": LABELS[m], "selection": SELECTION[m],
                              "metrics": {c: v.as_dict() for c, v in summaries(outcomes)[m].items()},
                              "runs": [o.as_dict() for o in runs]} for m, runs in outcomes.items()}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(payload, indent=1, default=float))
    text = markdown(outcomes, oracle, context)
    (args.out_dir / f"{args.name}.md").write_text(
        f"<!-- generated by: {context['command']} ({context['date']}, {context['machine']}, commit "
        f"{context['commit']}); do not edit -->\n" + text)
    print(text)


if __name__ == "__main__":
    main()
