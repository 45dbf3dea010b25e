"""The transfer experiment over seeds: ``jobs/transfer.py`` run once per ``transfer.seed``, its
results read back from MLflow, and ``transfer.md`` / ``transfer.json`` written from them.

    .venv/bin/python -m benchmarks.bench_transfer --config conf/local.yaml --date 2026-11-14            # seeds 0 1 2
    .venv/bin/python -m benchmarks.bench_transfer --config conf/local.yaml --date 2026-11-14 --seeds 0 \\
        --set transfer.epochs=1 --name transfer_smoke

Each seed runs the job as a scheduler would, in a subprocess of its own::

    python -m jobs.transfer --config C --date D --log-level WARNING --set transfer.seed=S [--set ...]

The seed changes the user-hash train / valid / test split and every method's initialisation
(docs/transfer.md). After the run the benchmark reads the job's MLflow run (``transfer-<D>``
with param ``seed`` = S, the newest one started after the subprocess) for each method's test
AUC, chosen epoch and seconds, and the rows per split. With the demo world's ground truth
(``raw/_truth/shop_prefs``) it also scores the oracle (the world's own ``p_label``) on the same
test rows (``--no-oracle`` skips this and Spark). The report gives every method's test AUC as
mean ± std over the seeds, and compares the methods pairwise with
:func:`training.evaluation.compare` against the paper's ordering FT ≥ RA > RT > RS.

Run it from the project root (the config's relative paths, such as the MLflow store, are
resolved there). A failed run stops the benchmark with one line.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from benchmarks import figures
from benchmarks.common import ROOT, machine_line
from core.config import Config, load_config
from core.errors import PlatformError
from training import evaluation as ev
from training.transfer import METHOD_NAMES, METHODS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from core.delta import DeltaTables

logger = logging.getLogger("bench_transfer")

JOB_MODULE = "jobs.transfer"
NAN = float("nan")
# the paper's ordering, as adjacent pairs (a, claim, b): "a claim b"
PAPER_ORDER: tuple[tuple[str, str, str], ...] = (("ft", "≥", "ra"), ("ra", ">", "rt"), ("rt", ">", "rs"))
PAPER_LINE = "FT ≥ RA > RT > RS"
SPLIT_ROWS = ("train_rows", "valid_rows", "test_rows")
# settings that are the same for every seed, shown once (from the first run's params)
SHARED_PARAMS = ("date", "snapshot_dt", "example_days", "methods", "ra_weighting", "selection")


# ---------------------------------------------------------------------- one seed's run
@dataclass(frozen=True)
class SeedRun:
    """What one seed's job run logged to MLflow (run ``transfer-<D>``), plus its wall time and the
    oracle's AUC on its test rows (NaN when not computed)."""

    seed: int
    run_id: str
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    wall_seconds: float = NAN
    oracle_auc: float = NAN
    # method -> per epoch {epoch, valid_auc, elapsed_seconds}: the job's curve metrics (step = epoch)
    curves: Mapping[str, list[dict[str, float]]] = field(default_factory=dict)

    def value(self, method: str, name: str) -> float:
        """The run's ``<method>_<name>`` metric (``test_auc``, ``chosen_epoch``, ``seconds``...); NaN if absent."""
        return float(self.metrics.get(f"{method}_{name}", NAN))

    @property
    def methods(self) -> list[str]:
        return [m for m in str(self.params.get("methods", "")).split(",") if m]

    def rows(self, key: str) -> int | None:
        raw = self.params.get(key)
        return int(raw) if raw not in (None, "") else None

    def as_dict(self) -> dict[str, Any]:
        names = ("test_auc", "test_logloss", "chosen_epoch", "chosen_valid_auc", "epochs", "seconds", "train_seconds")
        per_method = {m: {k: self.value(m, k) for k in names} for m in self.methods}
        return {"seed": self.seed, "run_id": self.run_id, "wall_seconds": self.wall_seconds,
                "rows": {k: self.rows(k) for k in SPLIT_ROWS}, "oracle_test_auc": self.oracle_auc,
                "methods": per_method, "params": dict(self.params), "curves": dict(self.curves)}


def job_command(config: str, date: str, seed: int | str, overrides: Sequence[str],
                methods: Sequence[str] = ()) -> list[str]:
    """The job's command line for one seed (``transfer.seed`` first, then the benchmark's overrides; the
    job's ``--methods`` when given, else all of them)."""
    sets = [x for o in overrides for x in ("--set", o)]
    chosen = ["--methods", *methods] if methods else []
    return [sys.executable, "-m", JOB_MODULE, "--config", config, "--date", date, "--log-level", "WARNING",
            *chosen, "--set", f"transfer.seed={seed}", *sets]


def failure_line(stderr_lines: Iterable[str], code: int) -> str:
    """One line saying why a job run failed: its own ``transfer failed: ...`` line (core.cli), else
    the last line it wrote, else its exit code."""
    lines = [ln.strip() for ln in stderr_lines if ln.strip()]
    own = [ln for ln in lines if ln.startswith("transfer failed:")]
    return own[-1] if own else (lines[-1] if lines else f"exit code {code} and no output")


def run_job(cmd: Sequence[str]) -> None:
    """Run the job in a subprocess from the project root; its stderr (warnings, progress lines) is
    passed through, its stdout (the summary table, which MLflow also holds) is dropped.

    Raises:
        RuntimeError: the job exited non-zero, with :func:`failure_line` as the message.
    """
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr or ():
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(failure_line(tail, code))


def find_run(client: "MlflowClient", experiment_id: str, date: str, seed: int, started_ms: int) -> SeedRun:
    """The newest finished MLflow run named ``transfer-<date>`` with param ``seed`` = ``seed`` that
    started at or after ``started_ms`` (epoch milliseconds).

    Raises:
        RuntimeError: no such run (the job logged elsewhere, e.g. another tracking URI).
    """
    found = client.search_runs(
        [experiment_id],
        filter_string=(f"attributes.run_name = 'transfer-{date}' AND params.seed = '{seed}' "
                       f"AND attributes.status = 'FINISHED' AND attributes.start_time >= {started_ms}"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise RuntimeError(f"no finished MLflow run 'transfer-{date}' with seed {seed} started after "
                           f"{dt.datetime.fromtimestamp(started_ms / 1000):%Y-%m-%d %H:%M:%S} in experiment "
                           f"{experiment_id} of {client.tracking_uri}; does the job log to the same tracking URI?")
    run = found[0]
    params = dict(run.data.params)
    return SeedRun(seed=seed, run_id=run.info.run_id, params=params,
                   metrics={k: float(v) for k, v in run.data.metrics.items()},
                   curves={m: curve(client, run.info.run_id, m)
                           for m in str(params.get("methods", "")).split(",") if m})


def curve(client: "MlflowClient", run_id: str, method: str) -> list[dict[str, float]]:
    """A method's per-epoch validation AUC and elapsed training time, from the run's metric history
    (``<m>_valid_auc`` and ``<m>_elapsed_seconds`` at step = epoch, logged by the job)."""
    auc = {m.step: m.value for m in client.get_metric_history(run_id, f"{method}_valid_auc")}
    elapsed = {m.step: m.value for m in client.get_metric_history(run_id, f"{method}_elapsed_seconds")}
    return [{"epoch": float(e), "valid_auc": float(auc[e]), "elapsed_seconds": float(elapsed[e])}
            for e in sorted(auc) if e in elapsed]


def oracle_test_auc(tables: "DeltaTables", run: SeedRun) -> float:
    """AUC of the demo world's own probability (``raw/_truth/shop_prefs`` ``p_label``) on the test
    rows of ``run``'s ``features/transfer_examples`` version: the best any method could score on
    that split. NaN when the lake has no ground truth (not a demo world)."""
    from pyspark.sql import functions as F

    from core import protocol as pr
    from core import tables as t
    from features.oracle import rank_auc
    from features.transfer import TRANSFER_EXAMPLES

    if not tables.exists(t.TRUTH_SHOP_PREFS):
        return NAN
    keys = ["user_id", "shop_id", "event_time"]
    test = (tables.read(TRANSFER_EXAMPLES, dt=run.params["date"], version=int(run.params["transfer_examples_version"]))
            .where(F.col("split") == pr.TEST).select(*keys))
    truth = tables.read(t.TRUTH_SHOP_PREFS, dt=run.params["example_days"].split(",")).select(*keys, "p_label",
                                                                                             "label")
    return rank_auc(truth.join(test, keys), "p_label", "label")


# ---------------------------------------------------------------------- summaries (pure)
def methods_of(runs: Sequence[SeedRun]) -> list[str]:
    """The methods any run compared, in the job's order (RT, FT, RS, RA)."""
    have = {m for r in runs for m in r.methods}
    return [m for m in METHODS if m in have]


def summaries(runs: Sequence[SeedRun], name: str = "test_auc") -> dict[str, ev.Summary]:
    """Per method, ``<m>_<name>`` over the seeds (mean ± sample std of the finite values)."""
    return {m: ev.summarize(r.value(m, name) for r in runs) for m in methods_of(runs)}


# compare(a, b) -> what it says of the paper's "a > b" / "a ≥ b"
RESULTS = {">": "holds", "≈": "noise", "<": "reversed", "?": "unknown"}


def verdict(claim: str, observed: str) -> str:
    """Whether the paper's ``a claim b`` (``≥`` or ``>``) holds, given ``compare(a, b)``."""
    result = RESULTS.get(observed, "unknown")
    if result == "holds":
        return "holds beyond noise"
    if result == "reversed":
        return "reversed beyond noise"
    if result == "noise":
        return "within noise (consistent with ≥)" if claim == "≥" else "within noise (not confirmed)"
    return "not measured"


def ordering(test_auc: Mapping[str, ev.Summary]) -> list[dict[str, Any]]:
    """Each adjacent pair of :data:`PAPER_ORDER` whose methods were run: the paper's claim, what the
    seeds show (``>``, ``<``, ``≈``; :func:`training.evaluation.compare`) and the verdict."""
    out = []
    for a, claim, b in PAPER_ORDER:
        if a not in test_auc or b not in test_auc:
            continue
        sa, sb = test_auc[a], test_auc[b]
        observed = ev.compare(sa, sb)
        out.append({"a": a, "b": b, "claim": claim, "observed": observed, "result": RESULTS.get(observed, "unknown"),
                    "verdict": verdict(claim, observed),
                    "a_mean": sa.mean, "b_mean": sb.mean, "delta": sa.mean - sb.mean})
    return out


def _f(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _epoch(value: float) -> str:
    return "–" if math.isnan(value) else str(int(value))


def markdown(runs: Sequence[SeedRun], context: Mapping[str, Any]) -> str:
    """The results file: header, command, settings, rows, the test AUC table, the pairwise
    comparison and the paper's ordering.

    Args:
        runs: one per seed, in seed order.
        context: ``command``, ``date`` (when generated), ``machine``, ``job_command`` (with ``<seed>``),
            ``config``, ``settings`` (the ``transfer`` section), ``wall_minutes``.
    """
    methods = methods_of(runs)
    auc = summaries(runs)
    seconds = summaries(runs, "seconds")
    valid = summaries(runs, "chosen_valid_auc")
    seeds = [r.seed for r in runs]
    first = runs[0].params if runs else {}
    settings = {k: v for k, v in context["settings"].items() if k != "seed"}
    lines = [f"<!-- generated by: {context['command']} ({context['date']}, {context['machine']}); do not edit -->",
             "# Transfer to shop preference over seeds: RT vs FT vs RS vs RA", "",
             "`jobs/transfer.py` (design: [docs/transfer.md](../../docs/transfer.md)) run once per seed by "
             "`benchmarks/bench_transfer.py`, which wrote this file from the job's MLflow runs. The seed "
             "(`transfer.seed`) changes the user-hash train / valid / test split and every method's initialisation; "
             "each method chooses its epoch on the validation split and the test split is scored once.", "",
             "## Command", "", "```bash", context["command"], "```", "",
             f"Each seed ran `{context['job_command']}` as a subprocess: {len(runs)} run(s), "
             f"{context['wall_minutes']:.1f} min wall.", "",
             "## Settings", "",
             f"`transfer` section of `{context['config']}` (after the overrides): "
             + ", ".join(f"`{k}` {v}" for k, v in settings.items())
             + f"; `seed` per run: {', '.join(map(str, seeds))}. RA's original tasks weighted by "
             f"`{first.get('ra_weighting', '?')}`; epoch selection: {first.get('selection', '?')}.", "",
             f"Window: the shop impressions of {first.get('example_days', '?').replace(',', ', ')}, users as of the "
             f"end of {first.get('snapshot_dt', '?')}.", "",
             "## Rows per seed", "",
             "| seed | train rows | valid rows | test rows | base model version | published vectors by version "
             "| job wall s | MLflow run |", "|---:|---:|---:|---:|---|---|---:|---|"]
    for r in runs:
        counts = " | ".join("–" if r.rows(k) is None else f"{r.rows(k):,}" for k in SPLIT_ROWS)
        lines.append(f"| {r.seed} | {counts} | {r.params.get('base_model_version', '–')} | "
                     f"{r.params.get('rep_model_versions', '–')} | {_f(r.wall_seconds, 0)} | `{r.run_id}` |")
    lines += ["", "## Test AUC (the epoch chosen on validation, test scored once)", "",
              f"Per-seed values in seed order ({', '.join(map(str, seeds))}); ± is the sample standard deviation "
              "over the seeds. Validation AUC: the chosen epoch's, what it was chosen on. Seconds: the method's wall "
              "time in the job (`<m>_seconds`).", "",
              "| method | | validation AUC | test AUC | per seed | chosen epoch per seed | seconds |",
              "|---|---|---:|---:|---|---|---:|"]
    for m in methods:
        per_seed = ", ".join(_f(r.value(m, "test_auc")) for r in runs)
        epochs = ", ".join(_epoch(r.value(m, "chosen_epoch")) for r in runs)
        lines.append(f"| {m.upper()} | {METHOD_NAMES[m]} | {valid[m].describe()} | {auc[m].describe()} | {per_seed} "
                     f"| {epochs} | {seconds[m].describe(1)} |")
    oracle = ev.summarize(r.oracle_auc for r in runs)
    if oracle.n:
        lines.append(f"| oracle | the world's own `p_label` on the same test rows | | {oracle.describe()} | "
                     f"{', '.join(_f(r.oracle_auc) for r in runs)} | | |")
    else:
        lines += ["", "Oracle: not available (no `raw/_truth/shop_prefs` in this lake, or `--no-oracle`)."]
    lines += ["", "## Ordering", "",
              "`>` better beyond noise, `<` worse beyond noise, `≈` within noise: the difference of the means is at "
              "most twice its standard error over the seeds (`training.evaluation.within_noise`; with one seed "
              "every difference counts as noise).", "",
              "| test AUC: row vs column | " + " | ".join(m.upper() for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for a in methods:
        lines.append(f"| {a.upper()} | " + " | ".join("" if a == b else ev.compare(auc[a], auc[b]) for b in methods)
                     + " |")
    pairs = ordering(auc)
    lines += ["", f"The paper's ordering {PAPER_LINE}, pair by pair:", ""]
    for p in pairs:
        lines.append(f"* {p['a'].upper()} vs {p['b'].upper()} (paper: {p['a'].upper()} {p['claim']} {p['b'].upper()}):"
                     f" {p['observed']} ({_f(p['a_mean'])} vs {_f(p['b_mean'])}, Δ {p['delta']:+.4f}) — "
                     f"{p['verdict']}")
    tally = collections.Counter(p["result"] for p in pairs)
    lines += ["", f"Over {len(runs)} seed(s): {tally['holds']} of {len(pairs)} pairs hold beyond noise, "
                  f"{tally['noise']} within noise, {tally['reversed']} reversed."]
    return "\n".join(lines) + "\n"


def _finite_or_none(value: Any) -> Any:
    """``value`` with NaN floats replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def payload(runs: Sequence[SeedRun], context: Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable results: context, settings, every seed's numbers, summaries and the ordering."""
    auc = summaries(runs)
    per_name = {name: summaries(runs, name) for name in ("test_auc", "chosen_epoch", "seconds")}
    summary = {m: {name: s[m].as_dict() for name, s in per_name.items()} for m in methods_of(runs)}
    oracle = ev.summarize(r.oracle_auc for r in runs)
    return _finite_or_none({"context": dict(context), "runs": [r.as_dict() for r in runs], "summary": summary,
                            "oracle_test_auc": oracle.as_dict() if oracle.n else None,
                            "paper_ordering": PAPER_LINE, "ordering": ordering(auc)})


# ---------------------------------------------------------------------- main
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--date", required=True, type=dt.date.fromisoformat, help="the job's --date (YYYY-MM-DD)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="values of transfer.seed, one run each")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every run (e.g. transfer.epochs=2); not transfer.seed")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="transfer", help="results file names (<name>.md, <name>.json)")
    p.add_argument("--no-oracle", action="store_true", help="do not score the oracle (no Spark in this process)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=[],
                   help="the job's --methods (default: all four); e.g. rt alone, to compare RT's settings over "
                        "many seeds")
    args = p.parse_args(argv)
    if any(o.split("=", 1)[0].strip() == "transfer.seed" for o in args.overrides):
        p.error("transfer.seed is set per run from --seeds; remove it from --set")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has repeated values: {args.seeds}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    date = args.date.isoformat()
    started = time.time()
    try:
        cfg = load_config(args.config, args.overrides)
        runs = run_seeds(args.config, cfg, date, args.seeds, args.overrides, oracle=not args.no_oracle,
                         methods=args.methods)
    except (RuntimeError, PlatformError) as exc:
        raise SystemExit(f"bench_transfer failed: {exc}") from None
    command = "python -m benchmarks.bench_transfer " + " ".join(argv if argv is not None else sys.argv[1:])
    today = dt.date.today().isoformat()
    context = {  # machine_line() ends with the date, which the header gives first
        "command": command.strip(), "date": today, "machine": machine_line().removesuffix(f", {today}."),
        "transfer_date": date, "config": args.config, "overrides": args.overrides, "seeds": args.seeds,
        "job_command": " ".join(["python", *job_command(args.config, date, "<seed>", args.overrides,
                                                        args.methods)[1:]]),
        "settings": cfg.transfer.model_dump(mode="json"), "wall_minutes": (time.time() - started) / 60,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, context)
    results = payload(runs, context)
    if any(r.curves for r in runs):
        figures.save(figures.transfer_curves(results), args.out_dir / f"{args.name}_curves.png")
        text += ("\n## Validation AUC against training time\n\nEach method's validation AUC after each epoch "
                 "against its training time so far, the mean over the seeds (`benchmarks/figures.py` draws it "
                 f"from `{args.name}.json`).\n\n![validation AUC against training time]({args.name}_curves.png)\n")
    (args.out_dir / f"{args.name}.md").write_text(text)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    logger.info("wrote %s and %s", args.out_dir / f"{args.name}.md", args.out_dir / f"{args.name}.json")
    print(text)


def run_seeds(config: str, cfg: Config, date: str, seeds: Sequence[int], overrides: Sequence[str],
              oracle: bool = True, methods: Sequence[str] = ()) -> list[SeedRun]:
    """Run the job once per seed, read each run back from MLflow and (``oracle``) score the oracle on
    its test rows; log one line per seed with the elapsed time and the ETA.

    Raises:
        RuntimeError: a run failed or its MLflow run was not found (one line).
        PlatformError: the oracle's tables could not be read (e.g. TableNotFound).
    """
    from mlflow.tracking import MlflowClient

    from registry.tracking import configure_mlflow

    experiment = configure_mlflow(cfg.mlflow)
    client = MlflowClient()
    spark: Any = None
    tables: DeltaTables | None = None
    runs: list[SeedRun] = []
    started = time.time()
    try:
        for i, seed in enumerate(seeds, start=1):
            cmd = job_command(config, date, seed, overrides, methods)
            logger.info("seed %d (%d of %d): %s", seed, i, len(seeds), " ".join(cmd[1:]))
            t0 = time.time()
            try:
                run_job(cmd)
            except RuntimeError as exc:
                raise RuntimeError(f"seed {seed}: {exc}") from None
            run = replace(find_run(client, experiment, date, seed, int(t0 * 1000)), wall_seconds=time.time() - t0)
            if oracle:
                if tables is None:
                    from core.delta import get_tables
                    from core.spark import get_spark

                    spark = get_spark(cfg)
                    tables = get_tables(spark, cfg)
                run = replace(run, oracle_auc=oracle_test_auc(tables, run))
            runs.append(run)
            elapsed = time.time() - started
            logger.info("seed %d done in %.0f s (%d of %d, %s elapsed, ETA %s): test AUC %s%s", seed,
                        run.wall_seconds, i, len(seeds), _minutes(elapsed), _minutes(elapsed / i * (len(seeds) - i)),
                        ", ".join(f"{m.upper()} {_f(run.value(m, 'test_auc'))}" for m in run.methods),
                        f", oracle {_f(run.oracle_auc)}" if oracle else "")
    finally:
        if spark is not None:
            spark.stop()
    return runs


if __name__ == "__main__":
    main()
