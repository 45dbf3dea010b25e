"""How much do the published vectors' neighbour rates move between training runs, and between models?

    .venv/bin/python -m benchmarks.bench_vector_runs --config conf/local.yaml --set lake_root=<demo lake> \\
        --set mlflow.tracking_uri=<store> --set mlflow.artifact_location=<artifacts> \\
        --variant dupn_all training.hybrid=false training.model.prior_pieces=false --variant detached \\
        --seeds 11 12 13 --name vector_runs

``bench_neighbours`` scores one published partition: its bootstrap interval covers the sample of
query users, not the training run that made the vectors. This benchmark repeats the training. For
each ``--variant`` (a name and the config overrides that make it; none for the config's own model)
and each ``--seeds`` value (``training.seed``), it runs the platform's jobs in subprocesses, as a
scheduler would, on a lake that already holds a training set (e.g. after ``make demo``)::

    python -m jobs.train --config C --mode full --start <first training day> --end <last> --set training.seed=S \
        --set training.promotion.auto_promote=false ...
    python -m jobs.publish_user_representations --config C --date D --model-version <the version it registered>

and scores the published vectors of D with :func:`benchmarks.bench_neighbours.run` (k neighbours,
``--queries`` users drawn with ``--query-seed``, the same for every run): the share of each query's
neighbours with its true top interest category and its true tier. The training days are the
training set's ``train`` split (its commit metadata), D its test day (the demo's published day),
unless ``--start``/``--end``/``--date`` say otherwise. A variant that sets ``training.hybrid=true``
needs ``features/hybrid_examples`` (``jobs.build_hybrid_examples``) on the lake.

Each run's result is kept as ``<runs-dir>/<variant>_s<seed>.json`` (the variant's overrides, the
registered version, its chosen epoch and test metrics from MLflow, both rates with their intervals)
and reused by a later call with the same variant and overrides, so variants can run in separate
calls on separate copies of a lake (two at a time on two cores) and be rendered together with
``--cached-only``. A variant without overrides is the config's own model: in ``conf/local.yaml`` the
detached hybrid since 3348ece, DUPN-all before (the kept ``dupn_all`` runs of 2026-12-07 were made so).
Runs are made in seed order, each seed's variants in turn, so a drift of the machine's speed falls on
every variant alike.

The report gives every run, and per variant the mean ± std of each rate over its runs. For two
variants the difference of their means is given with its standard error, sqrt(s_a²/n_a + s_b²/n_b);
a difference within two standard errors is not told from run-to-run variation.

Writes ``<name>.md`` and ``<name>.json`` (``--out-dir``, default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.common import ROOT, bench_main, machine_line, run_job, set_args
from core.errors import PlatformError

logger = logging.getLogger("bench_vector_runs")

RATES = ("category", "tier")
RATE_LABELS = {"category": "same true top interest", "tier": "same true tier"}
TEST_METRICS = ("ctr_auc", "ctcvr_auc", "follow_auc", "ppp_accuracy")


@dataclass(frozen=True)
class Variant:
    """A model to train: a name and the config overrides (``KEY=VALUE``) that make it."""

    name: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, tokens: Sequence[str]) -> "Variant":
        name, *overrides = tokens
        bad = [o for o in overrides if "=" not in o]
        if not name or "=" in name or bad:
            raise PlatformError(f"--variant {' '.join(tokens)}: give a name, then KEY=VALUE overrides "
                                "(e.g. --variant detached training.hybrid=true)")
        return cls(name, tuple(overrides))


@dataclass(frozen=True)
class RunResult:
    """One training run's published vectors, scored."""

    variant: str
    overrides: tuple[str, ...]
    seed: int
    version: str
    selected_epoch: float
    test: Mapping[str, float]
    rates: Mapping[str, Mapping[str, Any]]  # category / tier -> mean, ci95, chance (bench_neighbours' rate)
    train_seconds: float
    commit: str = ""
    started: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return float(self.rates[key]["mean"])


def summary(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """mean(a) − mean(b) and its standard error sqrt(s_a²/n_a + s_b²/n_b) (NaN with fewer than two runs
    on either side)."""
    (ma, sa), (mb, sb) = summary(a), summary(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, math.nan
    return ma - mb, math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def cache_path(runs_dir: Path, variant: Variant, seed: int) -> Path:
    return runs_dir / f"{variant.name}_s{seed}.json"


def load_cached(runs_dir: Path, variant: Variant, seed: int) -> RunResult | None:
    """The kept result of this run, or None. A kept result made with other overrides is refused in one line."""
    path = cache_path(runs_dir, variant, seed)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if tuple(data["overrides"]) != variant.overrides:
        raise PlatformError(f"{path} was made with overrides {data['overrides']}, not {list(variant.overrides)}: "
                            "rename the variant or remove the file")
    data["overrides"], data["variant"] = tuple(data["overrides"]), variant.name  # the file name is the key
    return RunResult(**data)


# ---------------------------------------------------------------------- one run
def registered_runs(cfg: Any) -> tuple[Any, dict[str, str]]:
    """The registry and {version: run id} of every registered version of the configured model."""
    from registry.models import ModelRegistry

    registry = ModelRegistry(cfg.mlflow)
    versions = registry.client.search_model_versions(f"name='{registry.name}'")
    return registry, {str(v.version): str(v.run_id) for v in versions}


def train_and_score(args: argparse.Namespace, variant: Variant, seed: int, days: "Days") -> RunResult:
    """Train one model through ``jobs.train``, publish its vectors of ``days.publish`` and score them."""
    from benchmarks import bench_neighbours
    from benchmarks.common import commit
    from core.config import load_config

    # the runs never move the lake's champion alias: a benchmark leaves production as it found it
    sets = [*args.overrides, *variant.overrides, f"training.seed={seed}", "training.promotion.auto_promote=false"]
    cfg = load_config(args.config, sets)
    _, before = registered_runs(cfg)
    started = time.time()
    run_job(args.config, sets, "jobs.train", "--mode", "full", "--start", days.start, "--end", days.end)
    train_seconds = time.time() - started
    registry, after = registered_runs(cfg)
    new = sorted(set(after) - set(before), key=int)
    if len(new) != 1:
        raise PlatformError(f"jobs.train registered {len(new)} new versions of '{registry.name}' ({new}); expected 1")
    version = new[0]
    run_job(args.config, sets, "jobs.publish_user_representations", "--date", days.publish, "--model-version", version)
    run = registry.client.get_run(after[version])
    with tempfile.TemporaryDirectory() as out:
        ns = bench_neighbours.parser().parse_args(
            ["--config", args.config, *set_args(sets), "--date", days.publish,
             "--k", str(args.k), "--queries", str(args.queries), "--seed", str(args.query_seed),
             "--out-dir", out, "--name", "run"])
        bench_neighbours.run(ns, "bench_vector_runs")
        scored = json.loads((Path(out) / "run.json").read_text())
    published = next(r for r in scored["rows"] if r["key"] == "published")
    model = scored["context"]["model"]
    if model != f"{registry.name} v{version}":
        raise PlatformError(f"the published partition dt={days.publish} was written by {model}, not "
                            f"{registry.name} v{version}")
    metrics = run.data.metrics
    return RunResult(
        variant=variant.name, overrides=variant.overrides, seed=seed, version=version,
        selected_epoch=float(metrics.get("selected_epoch", math.nan)),
        test={k: float(metrics[f"test_{k}"]) for k in TEST_METRICS if f"test_{k}" in metrics},
        rates={k: {"mean": published["rates"][k]["mean"], "ci95": published["rates"][k]["ci95"],
                   "chance": published["rates"][k]["chance"]} for k in RATES},
        train_seconds=train_seconds, commit=commit(), started=dt.datetime.now().isoformat(timespec="seconds"),
        extra={"users": scored["context"]["users"], "lake_root": scored["context"]["lake_root"],
               "mlflow_run_id": after[version], "days": asdict(days)})


@dataclass(frozen=True)
class Days:
    start: str
    end: str
    publish: str


def training_days(args: argparse.Namespace) -> Days:
    """The training days and the published day: the arguments, else the training set's splits."""
    if args.start and args.end and args.date:
        return Days(args.start.isoformat(), args.end.isoformat(), args.date.isoformat())
    from core import tables as t
    from core.config import load_config
    from core.delta import get_tables
    from core.spark import get_spark

    cfg = load_config(args.config, args.overrides)
    tables = get_tables(get_spark(cfg), cfg)
    if not tables.exists(t.TRAINING_EXAMPLES):
        raise PlatformError(f"{t.TRAINING_EXAMPLES.name} does not exist under {tables.root}: run make demo (or "
                            "jobs.build_training_set) first, or give --start, --end and --date")
    splits = tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]
    return Days(args.start.isoformat() if args.start else min(splits["train"]),
                args.end.isoformat() if args.end else max(splits["train"]),
                args.date.isoformat() if args.date else max(splits["test"]))


# ---------------------------------------------------------------------- the report
def fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: Sequence[RunResult], variants: Sequence[Variant], context: Mapping[str, Any]) -> str:
    lines = [f"# Published vectors over training runs: {', '.join(v.name for v in variants)}", "",
             f"Command: `{context['command']}`  ", f"Machine: {context['machine']}", "",
             "Each row trains the model once through `jobs.train` (full), publishes its vectors of "
             f"{context['publish']} with `--model-version`, and scores their {context['k']} nearest neighbours "
             f"for {context['queries']} query users (seed {context['query_seed']}; bench_neighbours). "
             f"Training days {context['start']} – {context['end']}. The interval in brackets is the bootstrap "
             "interval over the query users of that one run; the spread between runs is the std below. A "
             "version is the registry's of the run's lake (its MLflow store).", "",
             "## Variants", ""]
    for v in variants:
        lines.append(f"- **{v.name}**: {', '.join(f'`{o}`' for o in v.overrides) or 'the config as it is'}")
    lines += ["", "## Per variant, over runs", "",
              "| variant | runs | " + " | ".join(f"{RATE_LABELS[k]}" for k in RATES) + " | "
              + " | ".join(TEST_METRICS) + " |",
              "|---|---:|" + "---:|" * (len(RATES) + len(TEST_METRICS))]
    by_variant = {v.name: [r for r in results if r.variant == v.name] for v in variants}
    for v in variants:
        rs = by_variant[v.name]
        if not rs:
            continue
        cells = []
        for k in RATES:
            m, s = summary([r.rate(k) for r in rs])
            cells.append(f"{m:.3f} ± {s:.3f}")
        for k in TEST_METRICS:
            vals = [r.test[k] for r in rs if k in r.test]
            cells.append("–" if not vals else "{:.4f} ± {:.4f}".format(*summary(vals)))
        lines.append(f"| {v.name} | {len(rs)} | " + " | ".join(cells) + " |")
    chance = {k: results[0].rates[k]["chance"] for k in RATES} if results else {}
    if chance:
        lines += ["", "Chance (a random other user shares the label): "
                  + ", ".join(f"{RATE_LABELS[k]} {chance[k]:.3f}" for k in RATES) + "."]
    if len(variants) >= 2:
        lines += ["", "## Differences", "", "| a − b | " + " | ".join(RATE_LABELS[k] for k in RATES) + " |",
                  "|---|" + "---:|" * len(RATES)]
        base = variants[0]
        for v in variants[1:]:
            a, b = by_variant[v.name], by_variant[base.name]
            if not a or not b:
                continue
            cells = []
            for k in RATES:
                d, se = difference([r.rate(k) for r in a], [r.rate(k) for r in b])
                verdict = "" if math.isnan(se) else (" (beyond 2 s.e.)" if abs(d) > 2 * se else " (within 2 s.e.)")
                cells.append(f"{d:+.3f} ± {fmt(se)}{verdict}")
            lines.append(f"| {v.name} − {base.name} | " + " | ".join(cells) + " |")
        lines += ["", "± is the standard error of the difference of the means, sqrt(s_a²/n_a + s_b²/n_b)."]
    lines += ["", "## Runs", "",
              "| variant | training.seed | lake | version | epoch chosen | train s | "
              + " | ".join(RATE_LABELS[k] for k in RATES) + " | " + " | ".join(TEST_METRICS) + " | commit |",
              "|---|---:|---|---:|---:|---:|" + "---:|" * (len(RATES) + len(TEST_METRICS)) + "---|"]
    for r in sorted(results, key=lambda r: ([v.name for v in variants].index(r.variant), r.seed)):
        rates = [f"{r.rate(k):.3f} [{r.rates[k]['ci95'][0]:.3f}, {r.rates[k]['ci95'][1]:.3f}]" for k in RATES]
        tests = [fmt(r.test.get(k, math.nan), 4) for k in TEST_METRICS]
        lines.append(f"| {r.variant} | {r.seed} | {r.extra.get('lake_root', '?')} | {r.version} | "
                     f"{fmt(r.selected_epoch, 2)} | "
                     f"{r.train_seconds:.0f} | " + " | ".join(rates) + " | " + " | ".join(tests)
                     + f" | {r.commit} |")
    if context.get("note"):
        lines += ["", f"Note: {context['note']}"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, command: str) -> str:
    variants = [Variant.parse(v) for v in args.variant]
    if len({v.name for v in variants}) != len(variants):
        raise PlatformError("--variant names must differ")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    todo = [(seed, v) for seed in args.seeds for v in variants]
    days: Days | None = None
    started = time.time()
    for i, (seed, v) in enumerate(todo):
        cached = load_cached(args.runs_dir, v, seed)
        if cached is None and args.cached_only:
            logger.warning("%s seed %d: no kept run in %s; left out (--cached-only)", v.name, seed, args.runs_dir)
            continue
        if cached is None:
            days = days or training_days(args)
            t0 = time.time()
            cached = train_and_score(args, v, seed, days)
            cache_path(args.runs_dir, v, seed).write_text(json.dumps(asdict(cached), indent=1))
            done, elapsed = i + 1, time.time() - started
            logger.info("%s seed %d: v%s, epoch %s, category %.3f, tier %.3f (%.0f s); %d of %d runs, ETA %.0f s",
                        v.name, seed, cached.version, fmt(cached.selected_epoch, 2), cached.rate("category"),
                        cached.rate("tier"), time.time() - t0, done, len(todo),
                        elapsed / done * (len(todo) - done))
        results.append(cached)
    if not results:
        raise PlatformError(f"no runs to report (none kept in {args.runs_dir})")
    first = results[0]
    if days is None and args.start and args.end and args.date:
        days = Days(args.start.isoformat(), args.end.isoformat(), args.date.isoformat())
    if days is None and "days" in first.extra:
        days = Days(**first.extra["days"])
    context = {"command": command, "machine": machine_line(), "k": args.k, "queries": args.queries,
               "query_seed": args.query_seed, "note": args.note,
               "start": days.start if days else "(not recorded)", "end": days.end if days else "(not recorded)",
               "publish": days.publish if days else "the test day", "users": first.extra.get("users")}
    text = markdown(results, variants, context)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(
        {"context": context, "variants": [asdict(v) for v in variants], "runs": [asdict(r) for r in results]},
        indent=1, default=float))
    (args.out_dir / f"{args.name}.md").write_text(
        f"<!-- generated by: {command} ({dt.date.today().isoformat()}); do not edit -->\n" + text)
    return text


def parser() -> argparse.ArgumentParser:
    from core.cli import parse_date

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml", help="config file (default conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every job (e.g. lake_root=/path/to/lake)")
    p.add_argument("--variant", action="append", nargs="+", required=True, metavar="NAME [KEY=VALUE ...]",
                   help="a model to train: its name, then its config overrides; repeat for each model")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13], help="training.seed values, a run each")
    p.add_argument("--start", type=parse_date, help="first training day (default: the training set's first)")
    p.add_argument("--end", type=parse_date, help="last training day (default: the training set's last)")
    p.add_argument("--date", type=parse_date, help="published day (default: the training set's test day)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--queries", type=int, default=2000, help="query users (default 2000)")
    p.add_argument("--query-seed", type=int, default=0, help="seed of the query sample (default 0)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "benchmarks" / "results" / "vector_runs",
                   help="where each run's result is kept and reused")
    p.add_argument("--cached-only", action="store_true", help="report the kept runs only; train nothing")
    p.add_argument("--note", default="", help="a note printed under the report")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="vector_runs", help="results file names (<name>.md, <name>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("bench_vector_runs", parser().parse_args(argv), run, argv)


if __name__ == "__main__":
    main()
