"""The whole daily pipeline at two sizes of the demo world on this machine: wall time and peak memory per
stage, each stage's scaling exponent between the sizes, and a projection of the cost at 1B events a day.

    python -m benchmarks.bench_scale --users 20000 200000 --out benchmarks/results/scale.md

Each size is a fresh lake under ``--work-dir`` holding the demo world of ``--config`` with
``demo.n_users`` set to the size (the catalogue, the days and the events per user and day stay the
config's, so the events grow with the users). Every stage runs as its own process, exactly as a
scheduler runs it (``python -m jobs.<job> --config ... --set ...``), in the order of :data:`STAGES`:
the world, the sequences of the day before the last built in full, the last day's sequences advanced
incrementally from them and then rebuilt in full (the same day both ways), the training set, the
statistics, one epoch of full training (``training.epochs=1``, selection on the validation day, the test
day scored, registered and made champion), the nightly job, and the two interactive queries. A
``SELECT 1`` through ``jobs.query sql`` measures what every Spark job pays to start.

Per stage: wall seconds, the peak summed RSS of the job's process tree (the Python driver, its JVM, which
in ``local[*]`` also runs the executors, and their Python workers) and the peak RSS of the Python driver
alone, which must not grow with the data. The exponent b of a stage is fitted as
``t ∝ events^b`` between the two sizes, on the time after the start-up for the stages that start Spark.
The projection (``--events-per-day``, default 1B) scales each stage of the larger run to a world of the
same shape with that many events a day and converts it to core-hours (the 2 cores of this machine
busy for that long); its price per core-hour is an assumption given on the command line.

``--resume`` keeps the stages of a size that a previous run of the same command recorded in the JSON
beside ``--out`` (the lake must still be there) and runs the rest.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import WORK, commit, machine, run_sampled, set_args, write_result
from core import tables as t
from core.config import Config, load_config
from scripts.demo import FIRST_USER, WARM_UP_DAYS

logger = logging.getLogger("bench_scale")
MB = 2**20


@dataclass(frozen=True)
class Days:
    """The days of a world: the first training day, the last training day, the day before the last and
    the last (test) day."""

    start: str
    train_end: str
    before_last: str
    last: str

    @staticmethod
    def of(cfg: Config) -> "Days":
        first = cfg.demo.start_date
        last = first + dt.timedelta(days=cfg.demo.days - 1)
        one = dt.timedelta(days=1)
        start = first + dt.timedelta(days=WARM_UP_DAYS)
        return Days(start.isoformat(), (last - 2 * one).isoformat(), (last - one).isoformat(), last.isoformat())

    def n_built(self) -> int:
        """Days of the training set (training, validation and test days)."""
        return (dt.date.fromisoformat(self.last) - dt.date.fromisoformat(self.start)).days + 1

    def n_train(self) -> int:
        return (dt.date.fromisoformat(self.train_end) - dt.date.fromisoformat(self.start)).days + 1


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name, what a scheduler runs (module and arguments), whether it starts
    Spark, and what share of its measured work one day of a running pipeline repeats (``daily``: a function
    of the training set's days and its training days; ``None``: not a daily step)."""

    name: str
    module: str
    args: Callable[[Days], list[str]]
    spark: bool = True
    daily: Callable[[int, int], float] | None = None
    note: str = ""
    project: bool = True  # a batch stage whose work follows the data (the queries' latency does not)


STAGES: tuple[Stage, ...] = (
    Stage("Spark start-up (SELECT 1)", "jobs.query", lambda d: ["sql", "SELECT 1"],
          note="what every Spark job below pays before it reads anything"),
    Stage("world (generate_demo_world)", "jobs.generate_demo_world", lambda d: [],
          note="the upstream's logs, not a daily step"),
    Stage("sequences, full (day before)", "jobs.build_sequences", lambda d: ["--date", d.before_last, "--full"],
          note="the fallback when yesterday's state is unusable"),
    Stage("sequences, incremental", "jobs.build_sequences", lambda d: ["--date", d.last],
          daily=lambda built, train: 1.0, note="yesterday's state advanced by the last day"),
    Stage("sequences, full (same day)", "jobs.build_sequences", lambda d: ["--date", d.last, "--full"],
          note="the same partition rebuilt from the whole look-back"),
    Stage("training set", "jobs.build_training_set", lambda d: ["--start", d.start, "--end", d.last],
          daily=lambda built, train: 1 / built, note="every day of the set built; a daily run builds one"),
    Stage("statistics", "jobs.feature_stats",
          lambda d: ["--date", d.last, "--training-start", d.start, "--training-end", d.last],
          daily=lambda built, train: 1.0),
    Stage("training, 1 epoch", "jobs.train", lambda d: ["--mode", "full", "--start", d.start, "--end", d.train_end],
          daily=lambda built, train: 1 / train,
          note="one epoch of every training day, validation scoring, the test day, registration; "
               "a daily incremental run trains one day"),
    Stage("nightly job (publish)", "jobs.publish_user_representations", lambda d: ["--date", d.last],
          daily=lambda built, train: 1.0, note="scoring every user, checks, the Delta commit, the vector index"),
    Stage("query user", "jobs.query", lambda d: ["user", str(FIRST_USER)], spark=False, project=False,
          note="one lookup, a new process"),
    Stage("query similar", "jobs.query", lambda d: ["similar", str(FIRST_USER), "--k", "10"], spark=False,
          project=False, note="10 nearest neighbours through the index, a new process"),
)


def size_overrides(users: int, lake: Path) -> list[str]:
    return [f"lake_root={lake / 'lake'}", f"mlflow.tracking_uri=sqlite:///{lake / 'mlflow.db'}",
            f"mlflow.artifact_location={lake / 'mlartifacts'}", f"demo.n_users={users}", "training.epochs=1"]


def rows(cfg: Config, spec: t.TableSpec, day: str | None = None) -> int:
    """Rows of the current snapshot of ``spec`` (partition ``day`` only when given), from the Parquet footers."""
    import pyarrow.parquet as pq

    from core.delta import get_tables_without_spark
    from features import representations as reps

    tables = get_tables_without_spark(cfg)
    if tables is None or not tables.exists(spec):
        return 0
    paths = reps.local_paths(tables.files(spec, dt=day)) or []
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def measure(cfg: Config, days: Days) -> dict[str, int]:
    """What each size holds: the events of the world, the users with sequences and published vectors on
    the last day, the training set's rows (example groups)."""
    return {"events": rows(cfg, t.EVENTS), "sequence_users": rows(cfg, t.USER_SEQUENCES, days.last),
            "training_rows": rows(cfg, t.TRAINING_EXAMPLES),
            "published_users": rows(cfg, t.USER_REPRESENTATIONS, days.last)}


def run_stage(stage: Stage, days: Days, config: str, overrides: list[str]) -> dict[str, Any]:
    sets = set_args(overrides)
    cmd = [sys.executable, "-m", stage.module, "--config", config, *sets, "--log-level", "WARNING",
           *stage.args(days)]
    logger.info("%s: %s", stage.name, " ".join(cmd[1:]))
    res = run_sampled(cmd)
    if res.returncode != 0:
        raise SystemExit(f"bench_scale: stage {stage.name!r} failed (exit {res.returncode}); its stderr ends "
                         f"with:\n{res.stderr_tail}")
    logger.info("%s: %.1f s, peak RSS %.0f MB (Python driver %.0f MB)", stage.name, res.seconds,
                res.peak_rss / MB, res.peak_root_rss / MB)
    return {"seconds": res.seconds, "peak_rss_mb": res.peak_rss / MB, "driver_rss_mb": res.peak_root_rss / MB,
            "driver_anon_mb": res.peak_root_anon / MB, "commit": commit()}


def run_size(users: int, config: str, extra: list[str], work: Path, done: dict[str, dict],
             save: Callable[[int, dict], None]) -> dict:
    """Every stage on a world of ``users`` users; ``done``: stages already measured on this lake (resume);
    ``save(users, stages)`` after each stage."""
    lake = work / f"u{users}"
    if not done and lake.exists():
        shutil.rmtree(lake)
    lake.mkdir(parents=True, exist_ok=True)
    overrides = [*size_overrides(users, lake), *extra]
    cfg = load_config(config, overrides)
    days = Days.of(cfg)
    stages = dict(done)
    for stage in STAGES:
        if stage.name not in stages:
            stages[stage.name] = run_stage(stage, days, config, overrides)
            save(users, stages)
    return {"users": users, "days": cfg.demo.days, "training_days": days.n_train(), "built_days": days.n_built(),
            **measure(cfg, days), "stages": stages}


def exponent(small: float, big: float, ratio: float) -> float | None:
    if small <= 0 or big <= 0:
        return None
    return math.log(big / small) / math.log(ratio)


def work_seconds(stage: Stage, run: dict) -> float:
    """The stage's time after the Spark start-up of the same size (its whole time when it starts no Spark)."""
    s = run["stages"][stage.name]["seconds"]
    if not stage.spark or stage is STAGES[0]:
        return s
    return max(s - run["stages"][STAGES[0].name]["seconds"], 1e-3)


def analyse(small: dict, big: dict, events_per_day: float) -> list[dict]:
    """Per stage: the exponent between the sizes and the projection to ``events_per_day``."""
    ratio = big["events"] / small["events"]
    factor = events_per_day / (big["events"] / big["days"])
    startup = big["stages"][STAGES[0].name]["seconds"]
    out = []
    for stage in STAGES:
        b = exponent(work_seconds(stage, small), work_seconds(stage, big), ratio)
        mem_b = exponent(small["stages"][stage.name]["peak_rss_mb"], big["stages"][stage.name]["peak_rss_mb"], ratio)
        drv_b = exponent(small["stages"][stage.name]["driver_rss_mb"], big["stages"][stage.name]["driver_rss_mb"],
                         ratio)
        fixed = startup if stage.spark and stage is not STAGES[0] else 0.0
        projected = None
        if b is not None and stage.project and stage is not STAGES[0]:
            projected = fixed + work_seconds(stage, big) * factor ** max(b, 1.0)
        share = stage.daily(big["built_days"], big["training_days"]) if stage.daily is not None else None
        daily = None if projected is None or share is None else projected * share
        out.append({"stage": stage.name, "exponent": b, "rss_exponent": mem_b, "driver_rss_exponent": drv_b,
                    "projected_s": projected, "daily_share": share, "daily_s": daily})
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "" if x is None else format(x, spec)


def reading(runs: list[dict], rows_: list[dict]) -> list[str]:
    """What the tables say, computed: where the daily time goes, the incremental against the full build,
    the stages that grow faster than the data, and the stages whose Python driver grows with it."""
    small, big = runs[0], runs[-1]
    daily = [s for s in STAGES if s.daily is not None]
    total = sum(big["stages"][s.name]["seconds"] for s in daily)
    shares = sorted(((big["stages"][s.name]["seconds"] / total, s.name) for s in daily), reverse=True)
    out = [f"Of the daily stages' {total:,.0f} s at {big['events'] / 1e6:.1f}M events, "
           + ", ".join(f"{name} takes {share:.0%}" for share, name in shares) + "."]
    inc, full = "sequences, incremental", "sequences, full (same day)"
    out.append("The incremental sequences against the full rebuild of the same day: " + "; ".join(
        f"{r['stages'][full]['seconds'] / r['stages'][inc]['seconds']:.2f}x faster at {r['events'] / 1e6:.1f}M events"
        for r in runs) + " (start-up included; bench_incremental_sequences.md measures the builds alone).")
    fast = [f"{a['stage']} (b = {a['exponent']:.2f})" for a in rows_[1:]
            if a["exponent"] is not None and a["exponent"] > 1.1]
    out.append("Stages growing faster than the events (b > 1.1): " + (", ".join(fast) if fast else "none") + ".")
    drv = [(s.name, small["stages"][s.name]["driver_rss_mb"], big["stages"][s.name]["driver_rss_mb"]) for s in STAGES]
    grown = [f"{name} ({a:,.0f} → {b:,.0f} MB)" for name, a, b in drv if b > 1.25 * a + 50]
    out.append("Python drivers that grew by more than a quarter (and 50 MB) with "
               f"{big['events'] / small['events']:.1f}× the events: " + (", ".join(grown) if grown else "none") + ".")
    return out


def anon_line(runs: list[dict]) -> str:
    """The drivers' anonymous memory (RSS without file-backed pages such as the memory-mapped index) and the
    commits the stages ran at, for the stages that recorded them."""
    anon = [f"{s.name} " + " → ".join(f"{r['stages'][s.name]['driver_anon_mb']:,.0f}" for r in runs) + " MB"
            for s in STAGES if all("driver_anon_mb" in r["stages"][s.name] for r in runs)]
    commits = sorted({st.get("commit", "") for r in runs for st in r["stages"].values()} - {""})
    redone = sorted({name for r in runs for name, st in r["stages"].items() if st.get("commit")})
    out = ""
    if anon:
        out += "Anonymous part of the driver's peak (without file-backed pages), smaller → larger size: " + \
            "; ".join(anon) + "."
    if redone:
        out += f" Stages run at commit {', '.join(commits)} (the others at the commit above, before the run was " \
            f"resumed with --resume): {', '.join(s.name for s in STAGES if s.name in redone)}."
    return out


def report(runs: list[dict], events_per_day: float, usd: float, cores: int, command: str, wall: float,
           provenance: str = "") -> str:
    """The markdown report; ``provenance``: the machine and commit of the run (default: this checkout's)."""
    small, big = runs[0], runs[-1]
    ratio = big["events"] / small["events"]
    rows_ = analyse(small, big, events_per_day)
    head = ["stage", *[f"{r['events'] / 1e6:.1f}M events: s" for r in runs],
            *[f"{r['events'] / 1e6:.1f}M: peak RSS MB (driver)" for r in runs], "time exponent b", "RSS exponent"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for stage, a in zip(STAGES, rows_):
        secs = [f"{r['stages'][stage.name]['seconds']:.1f}" for r in runs]
        mems = [f"{r['stages'][stage.name]['peak_rss_mb']:,.0f} ({r['stages'][stage.name]['driver_rss_mb']:,.0f})"
                for r in runs]
        lines.append(f"| {stage.name} | " + " | ".join([*secs, *mems, fmt(a["exponent"]), fmt(a["rss_exponent"])])
                     + " |")
    sizes = "\n".join(
        f"* {r['users']:,} users: {r['events']:,} events over {r['days']} days; {r['sequence_users']:,} users with "
        f"sequences and {r['published_users']:,} published on the last day; {r['training_rows']:,} training-set "
        f"rows over {r['built_days']} days ({r['training_days']} training days)." for r in runs)
    per_day = big["events"] / big["days"]
    factor = events_per_day / per_day
    proj = ["| stage | projected s on these 2 cores | core-hours | daily share | daily core-hours |",
            "|---|---:|---:|---:|---:|"]
    hours = cores / 3600  # core-hours per second of this machine
    total_daily = sum(a["daily_s"] or 0.0 for a in rows_) * hours
    for a in rows_:
        if a["projected_s"] is not None:
            dch = None if a["daily_s"] is None else a["daily_s"] * hours
            proj.append(f"| {a['stage']} | {fmt(a['projected_s'], ',.0f')} | {fmt(a['projected_s'] * hours, ',.1f')} | "
                        f"{fmt(a['daily_share'], '.3f')} | {fmt(dch, ',.1f')} |")
    notes = "\n".join(f"* *{s.name}*: {s.note}." for s in STAGES if s.note)
    drivers = [r["stages"][s.name]["driver_rss_mb"] for r in runs for s in STAGES]
    return f"""# The daily pipeline at two sizes on one machine

Command: `{command}`
Machine: {provenance or f"{machine()}; commit {commit()}"}; wall time {wall:,.0f} s. Each stage a new process
as a scheduler runs it (`python -m jobs.<job>`), `local[*]`, the config's Spark settings, nothing else running.

{sizes}

## Reading

{chr(10).join(f"* {line}" for line in reading(runs, rows_))}

## Stages

| {lines[0][2:]}
{chr(10).join(lines[1:])}

Peak RSS: the job's whole process tree (in `local[*]` the JVM runs the driver and the executors), in brackets the
Python driver alone. Exponent b: `t ∝ events^b` between the sizes ({ratio:.1f}× the events), on the time after the
start-up for the stages that start Spark; RSS exponent the same for the process tree's peak.

{notes}

## Driver memory

The Python driver's peak RSS ranged {min(drivers):,.0f}–{max(drivers):,.0f} MB over every stage and both sizes
(driver RSS exponents: {", ".join(f"{s.name} {fmt(a['driver_rss_exponent'])}" for s, a in zip(STAGES, rows_))}).
{anon_line(runs)}

## Projection to {events_per_day:,.0f} events a day

A world of the same shape as the larger run ({per_day:,.0f} events a day, the same events per user and days)
with {events_per_day:,.0f} events a day is {factor:,.0f}× larger. Each stage's projected time on these 2 cores is
its start-up plus its measured work × {factor:,.0f}^max(b, 1): a stage that reads all of its input cannot
grow slower than it, and an exponent below 1 here is a fixed cost per job (the Delta log, planning, small tasks)
that these sizes do not yet amortise. Core-hours are that time × {cores} cores. The queries are not projected:
their latency depends on the index and the row-group pruning, not on the day's events (query.md, similar.md).
The daily share is what one day of a running pipeline repeats: the incremental sequences, one day of the
training set, the statistics, one day of incremental training, the nightly job. On a cluster the core-hours
divide over the cores only as far as a stage scales out; the exponents above are measured on one machine.

{chr(10).join(proj)}

Daily total: {total_daily:,.1f} core-hours, about {total_daily * usd:,.0f} USD a day at an assumed {usd} USD per
core-hour (an on-demand price of the order of general-purpose cloud instances; not measured here), about
{total_daily / 24:,.0f} cores busy around the clock.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--users", nargs=2, type=int, default=[20_000, 200_000], metavar=("SMALL", "BIG"))
    p.add_argument("--events-per-day", type=float, default=1e9, help="the projection's daily events")
    p.add_argument("--usd-per-core-hour", type=float, default=0.045, help="the projection's assumed price")
    p.add_argument("--work-dir", type=Path, default=WORK / "scale", help="the lakes (one per size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="keep the stages the JSON beside --out records")
    p.add_argument("--out", type=Path, default=None, help="the markdown report (the JSON is written beside it)")
    p.add_argument("--render", action="store_true", help="rewrite --out from the JSON beside it only")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "python -m benchmarks.bench_scale --users " + " ".join(map(str, args.users)) + \
        "".join(f" --set {o}" for o in args.overrides) + (f" --out {args.out}" if args.out else "")
    js = args.out.with_suffix(".json") if args.out else args.work_dir / "scale.json"
    cores = os.cpu_count() or 1
    if args.render:
        done = json.loads(js.read_text())
        body = report(done["runs"], args.events_per_day, args.usd_per_core_hour, cores, done["command"],
                      done["wall_s"], done["provenance"])
        write_result(args.out, done["command"], body)
        print(body)
        return
    previous = json.loads(js.read_text()) if args.resume and js.exists() else {}
    partial: dict = {"command": command, "partial": previous.get("partial", {})}

    def save(users: int, stages: dict) -> None:
        partial["partial"][str(users)] = stages
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(partial, indent=1))

    t0 = time.perf_counter()
    runs = [run_size(u, args.config, args.overrides, args.work_dir,
                     previous.get("partial", {}).get(str(u), {}), save)
            for u in args.users]
    wall = time.perf_counter() - t0 + previous.get("wall_s", 0.0)
    provenance = previous.get("provenance") or f"{machine()}; commit {commit()}"  # the first run's, when resumed
    body = report(runs, args.events_per_day, args.usd_per_core_hour, cores, command, wall, provenance)
    js.write_text(json.dumps({"command": command, "wall_s": wall, "provenance": provenance, "runs": runs,
                              "partial": partial["partial"],
                              "analysis": analyse(runs[0], runs[-1], args.events_per_day)}, indent=1))
    write_result(args.out, command, body)
    print(body)


if __name__ == "__main__":
    main()
