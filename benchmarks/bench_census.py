"""The census-income multi-task benchmark: every sharing design × task weighting through the platform's
tabular path (``jobs/import_census.py`` -> ``jobs/build_tabular_set.py`` -> Petastorm -> the trainer).

    .venv/bin/python -m benchmarks.bench_census --split-seed 2026 --test-frac 0.2 --valid-frac 0.1 \\
        --seeds 0 1 2 3 4 --out r.json
    .venv/bin/python -m benchmarks.bench_census --models shared_bottom_fixed mmoe_gradnorm --seeds 0 1 2

Data: UCI Census-Income (KDD), ``../shared/data/census_income_kdd`` (99,762 rows; never committed).
Split: ``numpy.random.default_rng(split_seed).permutation(n)``: test = its first n·test_frac rows,
validation the next n·valid_frac, training the rest (``core.config.TabularSplit``). Tasks: income >
50K and never married (``conf/census.yaml``). Each model trains until validation stops improving
(the mean of the two validation AUCs, ``training.early_stopping``; ``training.epochs`` is the cap)
and keeps its best weights; the test split is scored once per run. Models: ``single_task`` (one
model per task) and ``<design>_<weighting>`` for the designs shared_bottom, mmoe, cgc, ple,
cross_stitch and the weightings fixed, uncertainty, gradnorm.

Writes ``--out`` (JSON: ``{"summary": {MODEL: {"income": {"mean", "std"}, "never_married": {...},
"samples_per_s": ...}}, "runs": [...]}``) and the table ``--table`` (default
``benchmarks/results/census.md``). The splits are read through Petastorm once and held in memory
(the table is small); samples/s counts training rows per second of the training loop without its
validation scorings, on ``training.torch_threads`` threads. The table checks issue 11's goal on the
configured model (the config's ``training.model.architecture`` and ``training.weighting``; the model
with the best validation score when the configured one did not run); the test split never chooses.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import ROOT, WORK, commit, exits_on_platform_error, machine, run_job, write_result
from core.config import Config, load_config
from core.errors import PlatformError

logger = logging.getLogger(__name__)

TASKS = ("income", "never_married")
DESIGNS = ("shared_bottom", "mmoe", "cgc", "ple", "cross_stitch")
WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")
MODELS = ("single_task", *(f"{d}_{w}" for d in DESIGNS for w in WEIGHTINGS))
GATED = ("mmoe", "cgc", "ple")
# torch-rechub 0.9.0 on this machine (the measurement): same file, same split (seed 2026, 70/10/20),
# seeds 0-4; and the papers, which trained on the separate 199,523-row training file.
REFERENCES = (
    ("torch-rechub 0.9.0, shared-bottom (this machine, same split)", "0.9451 ± 0.0020", "0.9941", "25-29k"),
    ("torch-rechub 0.9.0, MMoE (this machine, same split)", "0.9416 ± 0.0055", "0.9941", "25-29k"),
    ("torch-rechub 0.9.0, PLE (this machine, same split)", "0.9453 ± 0.0016", "0.9941", "25-29k"),
    ("MMoE paper (Ma et al. 2018; 199,523 training rows)", "0.9410", "0.9926", "–"),
    ("PLE paper (Tang et al. 2020; 199,523 training rows)", "0.9522", "0.9945", "–"),
)
GOAL_INCOME, GOAL_INCOME_STD, GOAL_MARRIED, GOAL_RATE = 0.9453, 0.002, 0.9941, 2 * 29_000


@dataclass
class Run:
    """One model and seed: test metrics, cost, gate utilisation."""

    model: str
    seed: int
    test: dict[str, float]
    valid: dict[str, float]
    epochs: float
    train_rows: int
    train_seconds: float
    gates: dict[str, list[float]] = field(default_factory=dict)
    collapsed: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.train_rows / max(self.train_seconds, 1e-9)


def design_of(model: str) -> tuple[str, str]:
    """``mmoe_gradnorm`` -> ("mmoe", "gradnorm"); ``single_task`` -> ("shared_bottom", "fixed")."""
    if model == "single_task":
        return "shared_bottom", "fixed"
    for w in WEIGHTINGS:
        if model.endswith(f"_{w}"):
            return model[:-len(w) - 1], w
    raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


def prepare(config: str, overrides: Sequence[str], cfg: Config, source: str | None) -> Any:
    """Import the file and build the encoded table with this split where missing; return the built set."""
    from core.delta import get_tables
    from core.spark import get_spark
    from features.census import CENSUS_INCOME
    from features.tabular import load_tabular_set

    tables = get_tables(get_spark(cfg), cfg)
    if not tables.exists(CENSUS_INCOME):
        run_job(config, overrides, "jobs.import_census", *(["--source", source] if source else []))
    try:
        return load_tabular_set(tables, cfg.tabular)
    except PlatformError as exc:
        logger.info("building the encoded table (%s)", exc)
    run_job(config, overrides, "jobs.build_tabular_set")
    return load_tabular_set(tables, cfg.tabular)


def train_one(model: str, seed: int, cfg: Config, encoding: dict[str, Any], tensors: dict[str, Any]) -> Run:
    """Train ``model`` with ``seed`` on the in-memory splits, select on validation, score test once."""
    from training.data import TensorBatches
    from training.model import GateStats, attach_gate_stats
    from training.tabular import TabularSpec, metrics, predict
    from training.trainer import TrainPlan, train_process

    design, weighting = design_of(model)
    tc = cfg.training.model_copy(update={
        "seed": seed, "model": cfg.training.model.model_copy(update={"architecture": design}),
        "weighting": cfg.training.weighting.model_copy(update={"kind": weighting})})
    groups = [[t] for t in TASKS] if model == "single_task" else [list(TASKS)]
    out = Run(model, seed, {}, {}, 0.0, 0, 0.0)
    for tasks in groups:
        spec = TabularSpec.from_config(cfg.tabular, tc, encoding, tasks=tasks)
        plan = TrainPlan(spec=spec.to_dict(), training=tc, train_files=(), valid_files=(), epochs=tc.epochs,
                         select=True, progress=False)
        data = {"train": TensorBatches(tensors["train"], tc.batch_size, shuffle=True, seed=seed),
                "valid": TensorBatches(tensors["valid"], tc.eval_batch_size, shuffle=False)}
        result = train_process(plan, data=data)
        if result is None:
            raise RuntimeError("training returned no result")
        net = result.model()
        if design in GATED:
            stats = GateStats()
            attach_gate_stats(net, stats)
            predict(net, data["valid"].batches())
            attach_gate_stats(net, None)
            out.gates, out.collapsed = stats.result(), stats.collapsed()
        test = metrics(spec, predict(net, TensorBatches(tensors["test"], tc.eval_batch_size, shuffle=False)
                                     .batches()))
        out.test.update(test)
        out.valid.update(result.validation_metrics)
        out.epochs = max(out.epochs, float(result.selected.get("epoch_fraction", math.nan)))
        out.train_rows += result.train_samples
        out.train_seconds += result.train_seconds - sum(e.get("eval_seconds", 0.0) for e in result.evals)
    return out


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """MODEL -> {task: {mean, std}, samples_per_s, epochs, gates}."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == model]
        entry: dict[str, Any] = {}
        for task in TASKS:
            values = np.array([r.test.get(f"{task}_auc", math.nan) for r in mine])
            entry[task] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                           else 0.0, "values": values.tolist()}
        scores = [np.mean([r.valid.get(f"{task}_auc", math.nan) for task in TASKS]) for r in mine]
        entry["valid_score"] = float(np.mean(scores))
        entry["valid_se"] = float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
        entry["samples_per_s"] = float(np.mean([r.samples_per_s for r in mine]))
        entry["epochs"] = float(np.mean([r.epochs for r in mine]))
        entry["seeds"] = [r.seed for r in mine]
        if mine[0].gates:
            names = mine[0].gates.keys()
            entry["gates"] = {g: np.mean([r.gates[g] for r in mine if g in r.gates], axis=0).round(3).tolist()
                              for g in names}
            entry["collapsed_gates"] = {g: sum(g in r.collapsed for r in mine) for g in names
                                        if any(g in r.collapsed for r in mine)}
        out[model] = entry
    return out


def configured(cfg: Config) -> str:
    """The model key of a config's design and weighting (``training.model.architecture``, ``training.weighting``)."""
    return f"{cfg.training.model.architecture}_{cfg.training.weighting.kind}"


def table(summary: dict[str, dict[str, Any]], command: str, notes: dict[str, Any]) -> str:
    """The Markdown report: the models, the references, the goal, the gates."""
    def cell(e: dict[str, Any], task: str) -> str:
        return f"{e[task]['mean']:.4f} ± {e[task]['std']:.4f}"

    # the goal is checked on the configured model (conf/census.yaml's design and weighting, chosen on
    # validation beforehand, docs/tabular.md) when it ran, else on the best validation score (each
    # run's selection score, the mean of the two validation AUCs, averaged over the seeds); the test
    # split never chooses
    top = max(summary, key=lambda m: summary[m]["valid_score"])
    best = notes.get("configured") if notes.get("configured") in summary else top
    which = "the configured model" if best == notes.get("configured") else "the best validation score"
    lines = [
        "# Census-income: sharing designs × task weightings",
        "",
        f"Command: `{command}`  ",
        f"Machine: {notes['machine']}; date {notes['date']}; commit {notes['commit']}; load average at start "
        f"{notes['load']:.2f} (other processes share the 2 cores: samples/s compare only within this run).  ",
        f"Data: {notes['data']}.  ",
        f"Split: permutation of default_rng({notes['split']['seed']}): test {notes['split']['test_frac']:.0%}, "
        f"validation {notes['split']['valid_frac']:.0%}, training the rest ({notes['rows']}).  ",
        f"Protocol: each run keeps the weights of its best validation score (mean of the two validation AUCs), "
        f"within {notes['epochs_cap']} epochs (patience {notes['patience']} epochs); the test split is scored once. "
        f"Seeds {notes['seeds']}; each cell is the test AUC mean ± std over them. **Bold**: {which} "
        f"({best}), whose test AUCs the goal checks. Best validation score (the mean of the two validation AUCs, "
        f"averaged over the seeds): {top}, {summary[top]['valid_score']:.5f} ± {summary[top]['valid_se']:.5f} "
        f"(± one standard error); {best}: {summary[best]['valid_score']:.5f} ± {summary[best]['valid_se']:.5f}.  ",
        f"Training: {notes['training']}.",
        "",
        "| model | income AUC | never-married AUC | samples/s | epochs chosen | gate utilisation (mean weight per "
        "expert) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for model, e in summary.items():
        gates = "; ".join(f"{g}: {', '.join(f'{x:.2f}' for x in w)}" for g, w in e.get("gates", {}).items())
        if e.get("collapsed_gates"):
            n = len(e["seeds"])
            gates += " — **collapsed onto one expert in " + ", ".join(
                f"{k}/{n} seeds: {g}" for g, k in e["collapsed_gates"].items()) + "**"
        name = f"**{model}**" if model == best else model
        lines.append(f"| {name} | {cell(e, 'income')} | {cell(e, 'never_married')} | {e['samples_per_s']:,.0f} | "
                     f"{e['epochs']:.1f} | {gates} |")
    lines += ["", "References (quoted, not re-measured by this benchmark):", "",
              "| reference | income AUC | never-married AUC | samples/s |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {inc} | {mar} | {rate} |" for name, inc, mar, rate in REFERENCES]
    b = summary[best]
    fastest = max(summary, key=lambda m: summary[m]["samples_per_s"])
    checks = [
        (f"income AUC ≥ 0.9453 ({which}, mean)", b["income"]["mean"] >= GOAL_INCOME,
         f"{best}: {b['income']['mean']:.4f}"),
        ("its std ≤ 0.002", b["income"]["std"] <= GOAL_INCOME_STD, f"{b['income']['std']:.4f}"),
        ("its never-married AUC ≥ 0.9941 (mean, at the reference's 4 decimals)",
         round(b["never_married"]["mean"], 4) >= GOAL_MARRIED, f"{b['never_married']['mean']:.5f}"),
        (f"its samples/s ≥ 2 × 29k = {GOAL_RATE:,}", b["samples_per_s"] >= GOAL_RATE,
         f"{b['samples_per_s']:,.0f} (fastest model: {fastest}, {summary[fastest]['samples_per_s']:,.0f})"),
    ]
    lines += ["", "Goal (issue 11), checked by this benchmark:", "", "| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g} | {'yes' if ok else '**no**'} | {v} |" for g, ok, v in checks]
    lines += ["", "Gate utilisation is the mean weight per expert on the validation split, averaged over the seeds; a "
              "gate is *collapsed* in a run when its mean weight on one expert exceeds 0.9 "
              "(`training.model.GateStats.COLLAPSE`), which the average over seeds can hide. Single-task trains one "
              "model per task (no weighting)."]
    return "\n".join(lines)


def render(results: Path, out: Path) -> None:
    """The table of an earlier run, from its JSON (the summary is recomputed from the runs)."""
    data = json.loads(results.read_text())
    runs = [Run(**{k: v for k, v in r.items() if k != "samples_per_s"}) for r in data["runs"]]
    notes = {k: data[k] for k in ("machine", "date", "commit", "load", "data", "split", "rows", "epochs_cap",
                                  "patience", "seeds", "training")}
    # a JSON written before the configured model was recorded: conf/census.yaml's
    notes["configured"] = data.get("configured") or configured(load_config(str(ROOT / "conf" / "census.yaml"), []))
    summary = summarize(runs)
    results.write_text(json.dumps({**data, "summary": summary}, indent=1, default=float))
    write_result(out, data["command"], table(summary, data["command"], notes))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "conf" / "census.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lake", default=str(WORK / "census" / "lake"), help="lake_root for the census tables")
    p.add_argument("--source", help="the census_income_kdd folder (default ../shared/data/census_income_kdd)")
    p.add_argument("--split-seed", type=int, default=2026)
    p.add_argument("--test-frac", type=float, default=0.2)
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "census.json"), help="the JSON results")
    p.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "census.md"), help="the Markdown table")
    p.add_argument("--render", metavar="JSON", help="write --table again from the runs of a results JSON of this "
                   "benchmark (its command and notes are kept), without training")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.render:
        render(Path(args.render), Path(args.table))
        return
    from features.census import DEFAULT_FOLDER

    folder = Path(args.source) if args.source else DEFAULT_FOLDER
    if not (folder / "census-income.test.gz").is_file():
        raise SystemExit(f"bench_census: the census data is absent ({folder}/census-income.test.gz); pass --source")
    overrides = [f"lake_root={args.lake}", f"tabular.split.seed={args.split_seed}",
                 f"tabular.split.test_frac={args.test_frac}", f"tabular.split.valid_frac={args.valid_frac}",
                 "tabular.split.method=permutation", *args.overrides]
    cfg = load_config(args.config, overrides)
    load = os.getloadavg()[0]
    with exits_on_platform_error("bench_census"):  # a preparation job failed: one line naming it
        built = prepare(args.config, overrides, cfg, str(folder))
    from training.data import TensorBatches
    from training.tabular import TabularSpec, TabularWorkload

    work = TabularWorkload(TabularSpec.from_config(cfg.tabular, cfg.training, built.encoding.to_dict()))
    tensors = {s: TensorBatches.collect(work.eval_source(cfg.training, built.files[s])).tensors
               for s in ("train", "valid", "test")}
    runs: list[Run] = []
    total = len(args.models) * len(args.seeds)
    started = time.perf_counter()
    for model in args.models:
        for seed in args.seeds:
            run = train_one(model, seed, cfg, built.encoding.to_dict(), tensors)
            runs.append(run)
            done = len(runs)
            elapsed = time.perf_counter() - started
            logger.info("[%d/%d] %s seed %d: income %.4f never_married %.4f, %.0f rows/s, epoch %.0f; elapsed %.0fs, "
                        "ETA %.0fs", done, total, model, seed, run.test.get("income_auc", math.nan),
                        run.test.get("never_married_auc", math.nan), run.samples_per_s, run.epochs, elapsed,
                        elapsed / done * (total - done))
    command = "python -m benchmarks.bench_census " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = summarize(runs)
    tc = cfg.training
    notes = {"machine": machine(), "date": dt.date.today().isoformat(), "commit": commit(), "load": load,
             "data": f"{folder.name}/census-income.test.gz through {built.describe()}",
             "split": cfg.tabular.split.model_dump(), "rows": ", ".join(f"{k} {v:,}" for k, v in built.rows.items()),
             "epochs_cap": tc.epochs, "patience": tc.early_stopping.patience, "seeds": args.seeds,
             "configured": configured(cfg),
             "training": f"{tc.optimizer} lr {tc.lr}, batch {tc.batch_size}, dropout {tc.model.dropout}, "
                         f"{tc.torch_threads or os.cpu_count()} torch thread(s); "
                         f"embeddings {cfg.tabular.embedding_dim}, "
                         + (f"dense columns also piecewise-linear over {cfg.tabular.dense_bins} quantile bins, "
                            if cfg.tabular.dense_bins else "")
                         + f"shared bottom {cfg.tabular.bottom_hidden}, towers {cfg.tabular.tower_hidden}, "
                         f"{tc.model.num_experts} shared experts of {tc.model.expert_dim} "
                         f"({tc.model.num_task_experts} per task in CGC/PLE, {tc.model.ple_levels} PLE levels)"}
    out = {"command": command, **notes, "summary": summary,
           "runs": [{**r.__dict__, "samples_per_s": r.samples_per_s} for r in runs]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    write_result(Path(args.table), command, table(summary, command, notes))
    print(f"bench_census: {len(runs)} runs in {time.perf_counter() - started:.0f}s; wrote {args.out} and {args.table}")


if __name__ == "__main__":
    main()
