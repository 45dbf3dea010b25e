"""The daily run as one unit: the steps of a day in one Spark session, resumable, with a run log.

``jobs/daily.py`` is the thin job; this module holds the plan of a day, the "same inputs" rule that
lets a re-run skip finished steps, and the run log ``ops/daily_runs``.

Steps of day D, in this order (``daily.steps`` picks a subset, e.g. a publish-only day):

* ``sequences``: ``build_sequences --date D``.
* ``training_set``: ``build_training_set`` over the range ending with D: ``daily.training_days``
  training days, then ``training_set.validation_days`` validation days, then D as the test day
  (defaults: D-2 train, D-1 validation, D test). Only those partitions are replaced; earlier days keep
  the examples (and split) of their own day's build. A build that already ends after D is not
  rebuilt backwards (the step refuses, naming it). With ``training.hybrid`` the step then runs
  ``build_hybrid_examples`` over the same range (the hybrid model's examples, ``features/hybrid.py``);
  a hybrid champion trains incrementally on them, so its daily run keeps ``training.hybrid`` on.
* ``feature_stats``: ``feature_stats --date D`` with the drift check against the training split of
  the newest training-set build that ends on or before D (none: serving statistics only).
* ``train``: ``train --mode incremental`` from the champion on the newest non-test day of that build
  (D - ``training_set.test_days``, its validation day: incremental training selects nothing), with
  that build's validation and test days; the gate scores D, which no model has trained on. Like the
  training set, an old day whose training is not done is refused once a later day's build exists.
* ``publish``: ``publish_user_representations --date D --model-version V`` with V the champion after
  the day's gate (recorded in the run log, so a re-run publishes the same version; on a day without
  ``train``: the champion at that moment).

"Same inputs": a step's fingerprint is the SHA-256 of its config settings (the sections it reads;
for ``train`` the ``training`` section without ``training.model``, which the champion fixes),
the Delta file lists of the input partitions it reads (a reloaded or appended partition has other
files), the versions of the unpartitioned snapshot tables (``raw/items``, ``raw/users``), and for
``feature_stats`` / ``train`` the version of the training-set build they use, for ``publish`` the
model version it publishes. A step is skipped when the run log's latest row of (D, step) says it
ran (or was skipped) with the same fingerprint and its output is still there: for sequences,
statistics and publishing the files of partition D are those of the recorded output version (no
other write replaced them); for the training set the partitions exist (a later day's build relabels
the days it shares, as it should); training's output is the registry, which the fingerprint does
not include (a later day's promotion does not make the day's training undone). The fingerprint and
the inputs it covers are also written into the run log's commit metadata and its ``details`` column.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from core import tables as t
from core.cli import JobContext, failure_reason
from core.config import DAILY_STEPS, Config
from core.errors import PlatformError
from core.protocol import range_days

if TYPE_CHECKING:
    from core.delta import DeltaTables

logger = logging.getLogger(__name__)

RAN, SKIPPED, FAILED, NOT_RUN = "ran", "skipped", "failed", "not run"
DONE = (RAN, SKIPPED)
TRAINING_SET_JOB = "build_training_set"  # the job name build_training_set records in its commits
# with training.hybrid, the training_set step also runs this job (its key in the jobs mapping): the examples of
# the same build with the hybrid model's side inputs (features/hybrid_examples)
HYBRID_JOB = "hybrid_examples"


@dataclass(frozen=True)
class StepJob:
    """An existing job a step calls in-process: its name, argument parser and ``run`` function."""

    job: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[JobContext], str]


@dataclass(frozen=True)
class StepResult:
    """One step of one day: a row of ``ops/daily_runs``."""

    day: str
    step: str
    status: str
    seconds: float = 0.0
    started_at: _dt.datetime | None = None
    output_table: str | None = None
    output_version: int | None = None
    output: str = ""
    fingerprint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    command: str = ""
    summary: str = ""  # the job's own printed summary (not stored)

    def row(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "step": self.step, "status": self.status, "started_at": self.started_at,
                "seconds": round(self.seconds, 3), "output_table": self.output_table,
                "output_version": self.output_version, "output": self.output, "fingerprint": self.fingerprint,
                "details": json.dumps(self.details, sort_keys=True, default=str), "message": self.message,
                "command": self.command, "dt": self.day}

    def describe(self) -> str:
        """``train          ran       312s  dupn_user_model v2 (champion v2)``, plus the message."""
        line = f"{self.step:<14} {self.status:<8} {self.seconds:6.0f}s  {self.output or '-'}"
        return f"{line}  ({self.message})" if self.message else line


@dataclass(frozen=True)
class DayReport:
    day: str
    steps: tuple[StepResult, ...]

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == FAILED), None)

    def describe(self) -> list[str]:
        return [f"daily {self.day}:", *(f"  {s.describe()}" for s in self.steps)]


@dataclass(frozen=True)
class Build:
    """A ``build_training_set`` commit of ``features/training_examples``: its version and splits."""

    version: int
    start: str
    end: str
    splits: dict[str, list[str]]


class MissingInput(PlatformError):
    """An upstream partition the day needs does not exist."""


def shift(day: str, days: int) -> str:
    return (_dt.date.fromisoformat(day) + _dt.timedelta(days=days)).isoformat()


def span(first: str, last: str) -> list[str]:
    """:func:`core.protocol.range_days` of two ``dt`` strings."""
    return range_days(_dt.date.fromisoformat(first), _dt.date.fromisoformat(last))


def training_range(day: str, cfg: Config) -> list[str]:
    """The days the ``training_set`` step of ``day`` builds (the last is ``day``, the test day)."""
    n = cfg.daily.training_days + cfg.training_set.validation_days + cfg.training_set.test_days
    return span(shift(day, -(n - 1)), day)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def command(module: str, base: Sequence[str], args: Sequence[str]) -> str:
    """``python -m <module> <base> <args>``, shell-quoted."""
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in (*base, *args))])


def newest_build(tables: "DeltaTables", until: str) -> Build | None:
    """The newest ``build_training_set`` commit whose range ends on or before ``until``, or None."""
    if not tables.exists(t.TRAINING_EXAMPLES):
        return None
    for commit in tables.history(t.TRAINING_EXAMPLES):
        meta = commit.metadata
        if meta.get("job") == TRAINING_SET_JOB and str(meta.get("end", "9999")) <= until and meta.get("splits"):
            return Build(commit.version, str(meta["start"]), str(meta["end"]),
                         {k: list(v) for k, v in meta["splits"].items()})
    return None


def latest_build_end(tables: "DeltaTables") -> str | None:
    if not tables.exists(t.TRAINING_EXAMPLES):
        return None
    ends = [str(c.metadata["end"]) for c in tables.history(t.TRAINING_EXAMPLES)
            if c.metadata.get("job") == TRAINING_SET_JOB and c.metadata.get("end")]
    return max(ends) if ends else None


class Day:
    """Runs the steps of one day (see the module docstring).

    Args:
        tables: the lake (one Spark session for every step).
        cfg: the resolved config (``daily.steps`` chooses the steps).
        jobs: step name -> the job it calls.
        base_args: ``--config ... --set ...`` of this run, passed to every step's job (and printed in
            the commands that re-run it).
        run_id: this run's id (every row of the run log carries it).
        registry: a factory of :class:`registry.models.ModelRegistry` (only steps that need it call it).
        on_step: called with each step's result as soon as it ends (the job prints it).
    """

    def __init__(self, tables: "DeltaTables", cfg: Config, jobs: Mapping[str, StepJob], base_args: Sequence[str],
                 run_id: str, registry: Callable[[], Any], on_step: Callable[[StepResult], None] | None = None):
        self.tables, self.cfg, self.jobs, self.base = tables, cfg, jobs, list(base_args)
        self.run_id, self._registry_factory, self.on_step = run_id, registry, on_step
        self._registry: Any = None
        self._champion_after: dict[str, str] = {}  # day -> the champion its train step left

    @property
    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    # ------------------------------------------------------------------ the day
    def run(self, day: str) -> DayReport:
        """Run (or skip) the configured steps of ``day`` in order; stop the day at the first failure."""
        wanted = list(self.cfg.daily.steps)
        previous = self._log_rows(day)
        results: list[StepResult] = []
        try:
            self.check_inputs(day, wanted)
        except MissingInput as exc:
            blocked = [StepResult(day, s, NOT_RUN, message=str(exc)) for s in wanted]
            blocked[0] = replace(blocked[0], status=FAILED, command=self._day_command(day))
            self._log(blocked)
            return DayReport(day, tuple(blocked))
        for step in DAILY_STEPS:
            if step not in wanted:
                results.append(StepResult(day, step, NOT_RUN, message="not in daily.steps"))
                continue
            if any(r.status == FAILED for r in results):
                failed = next(r.step for r in results if r.status == FAILED)
                res = StepResult(day, step, NOT_RUN, message=f"after the failure of {failed}")
            else:
                res = self._step(day, step, previous)
                if step == "train" and res.details.get("champion_after"):
                    self._champion_after[day] = str(res.details["champion_after"])
            results.append(res)
            if res.status != NOT_RUN:
                self._log([res])
                if self.on_step is not None:
                    self.on_step(res)
        not_run = [r for r in results if r.status == NOT_RUN]
        if not_run:
            self._log(not_run)
        return DayReport(day, tuple(results))

    def check_inputs(self, day: str, steps: Sequence[str]) -> None:
        """The upstream partitions of ``day`` exist: ``raw/events`` (every step reads it, publishing
        through the sequences), and for the training set the label tables of the enabled tasks that
        exist (an absent label table disables its task, as in build_training_set).

        Raises:
            MissingInput: one line naming the table and the date.
        """
        needed = [t.EVENTS]
        if "training_set" in steps:
            sources = {"ctr": t.IMPRESSIONS, "l2r": t.IMPRESSIONS, "follow": t.FOLLOWS, "ppp": t.PPP_LABELS}
            for task in self.cfg.training.tasks:
                spec = sources[task]
                if getattr(self.cfg.training_set, task).enabled and spec not in needed and self.tables.exists(spec):
                    needed.append(spec)
        for spec in needed:
            if not self.tables.exists(spec) or day not in self.tables.partitions(spec):
                raise MissingInput(f"{spec.name} has no partition dt={day} under {self.tables.root}: load it "
                                   f"upstream first")

    # ------------------------------------------------------------------ one step
    def _step(self, day: str, step: str, previous: list[dict[str, Any]]) -> StepResult:
        started = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
        t0 = time.monotonic()
        argv: list[str] = []
        try:
            argv, inputs = self._plan(day, step)
            fp = digest({"step": step, "dt": day, **inputs})
            cmd = command(f"jobs.{self.jobs[step].job}", self.base, argv)
            done = self._done(day, step, fp, previous)
            if done is not None:  # name the run that did the work (not a run that skipped it too)
                details = json.loads(done.get("details") or "{}")
                worker = details.get("same_as_run") or done["run_id"]
                return StepResult(day, step, SKIPPED, time.monotonic() - t0, started, done.get("output_table"),
                                  done.get("output_version"), done.get("output") or "", fp,
                                  {**details, "same_as_run": worker}, f"same inputs as run {worker}", cmd)
            if step in ("training_set", "train"):
                self._no_later_build(day, step)
            summary = self._call(step, argv)
            if step == "training_set" and self.cfg.training.hybrid:  # the hybrid model's examples of the same build
                summary += "\n" + self._call(HYBRID_JOB, argv)
            table, version, output, extra = self._output(step, day, summary)
        except Exception as exc:  # noqa: BLE001 - a failed step is a row of the run log and one line
            if not isinstance(exc, PlatformError):
                logger.error("daily %s step %s failed with an unexpected error", day, step, exc_info=True)
            reason = str(exc) if isinstance(exc, PlatformError) else failure_reason(exc)
            cmd = command(f"jobs.{self.jobs[step].job}", self.base, argv) if argv else ""
            return StepResult(day, step, FAILED, time.monotonic() - t0, started, message=reason.splitlines()[0]
                              if reason else type(exc).__name__, command=cmd)
        return StepResult(day, step, RAN, time.monotonic() - t0, started, table, version, output, fp,
                          {"inputs": inputs, **extra}, "", cmd, summary)

    def _call(self, step: str, argv: list[str]) -> str:
        job = self.jobs[step]
        args = job.parser().parse_args([*self.base, *argv])
        logger.info("daily: %s %s", job.job, " ".join(argv))
        return job.run(JobContext(job.job, args, self.cfg, self.run_id))

    def _plan(self, day: str, step: str) -> tuple[list[str], dict[str, Any]]:
        """The job arguments of ``step`` and what its fingerprint covers."""
        cfg, dump = self.cfg, self.cfg.to_dict()
        if step == "sequences":
            window = span(shift(day, -(cfg.sequences.lookback_days - 1)), day)
            return ["--date", day], {
                "config": {k: dump[k] for k in ("sequences", "inputs", "quality")},
                "files": {t.EVENTS.name: self._files(t.EVENTS, window)}, "versions": self._versions(t.ITEMS, t.USERS)}
        if step == "training_set":
            days = training_range(day, cfg)
            back = span(shift(days[0], -cfg.sequences.lookback_days), day)
            labels = [s for s in (t.IMPRESSIONS, t.FOLLOWS, t.PPP_LABELS) if self.tables.exists(s)]
            return ["--start", days[0], "--end", day], {
                "config": {"training_set": dump["training_set"], "sequences": dump["sequences"],
                           "inputs": dump["inputs"], "quality": dump["quality"], "tasks": dump["training"]["tasks"],
                           "range": days, **({"hybrid": {"side_bins": cfg.training.model.side_bins}}
                                             if cfg.training.hybrid else {})},
                "files": {**{s.name: self._files(s, days) for s in labels}, t.EVENTS.name: self._files(t.EVENTS, back)},
                "versions": self._versions(t.ITEMS, t.USERS)}
        if step == "feature_stats":
            build = newest_build(self.tables, day)
            drift = sorted(build.splits.get("train") or []) if build else []
            argv = ["--date", day] + (["--training-start", drift[0], "--training-end", drift[-1]] if drift else [])
            if not drift:
                logger.warning("daily %s: no training-set build ends on or before %s: serving statistics only, "
                               "no drift check", day, day)
            return argv, {
                "config": {k: dump[k] for k in ("stats", "inputs", "sequences", "quality")},
                "files": {t.USER_SEQUENCES.name: self._files(t.USER_SEQUENCES, [day]),
                          t.IMPRESSIONS.name: self._files(t.IMPRESSIONS, [day])},
                "versions": self._versions(t.ITEMS),
                "training_build": {"version": build.version, "train_days": drift} if build else None}
        if step == "train":
            build = newest_build(self.tables, day)
            if build is None:
                raise PlatformError(f"{t.TRAINING_EXAMPLES.name} has no build ending on or before {day}: add "
                                    f"training_set to daily.steps, or run jobs.build_training_set")
            test = [d for d in build.splits.get("test") or [] if d <= day]
            candidates = [d for d in build.splits.get("valid", []) + build.splits.get("train", []) if d <= day]
            if not test or not candidates:
                raise PlatformError(f"the training-set build v{build.version} ({build.start}..{build.end}) has no "
                                    f"test day or no earlier day to train on for {day}")
            train_day = max(candidates)
            argv = ["--mode", "incremental", "--date", train_day, "--test-days", *test]
            if build.splits.get("valid"):
                argv += ["--valid-days", *build.splits["valid"]]
            # the model's shape comes from the champion (training.model is read by full training only)
            settings = {k: v for k, v in dump["training"].items() if k != "model"}
            return argv, {"config": {"training": settings},
                          "training_build": {"version": build.version, "train_day": train_day, "test_days": test}}
        if step == "publish":
            # the champion the day's gate left (also when its training is skipped on a re-run), else the current one
            version = self._champion_after.get(day) or self.registry.champion_version()
            if version is None:
                raise PlatformError(f"no version of '{self.registry.name}' carries the alias '{self.registry.alias}': "
                                    f"run jobs.train --mode full first")
            return ["--date", day, "--model-version", str(version)], {
                "config": {k: dump[k] for k in ("publish", "sequences")},
                "files": {t.USER_SEQUENCES.name: self._files(t.USER_SEQUENCES, [day])},
                "model": {"name": self.registry.name, "version": str(version)}}
        raise PlatformError(f"unknown daily step {step!r} (known: {', '.join(DAILY_STEPS)})")

    def _output(self, step: str, day: str, summary: str) -> tuple[str | None, int | None, str, dict[str, Any]]:
        """Where the step's output is: (table, version, text, extra details)."""
        if step == "train":
            reg = self.registry
            versions = [int(v.version) for v in reg.client.search_model_versions(f"name='{reg.name}'")]
            newest, champion = (str(max(versions)) if versions else None), reg.champion_version()
            state = "promoted" if newest == champion else "not promoted"
            return reg.name, int(newest) if newest else None, \
                f"{reg.name} v{newest} ({state}; champion v{champion})", \
                {"registered": newest, "champion_after": champion}
        spec = {"sequences": t.USER_SEQUENCES, "training_set": t.TRAINING_EXAMPLES, "feature_stats": t.FEATURE_STATS,
                "publish": t.USER_REPRESENTATIONS}[step]
        version = self.tables.version(spec)
        if step == "training_set" and self.cfg.training.hybrid:
            hybrid = self.tables.version(t.HYBRID_EXAMPLES)
            return spec.name, version, f"{spec.name} v{version}, {t.HYBRID_EXAMPLES.name} v{hybrid}", \
                {"hybrid_examples_version": hybrid}
        return spec.name, version, f"{spec.name} v{version}", {}

    # ------------------------------------------------------------------ skipping
    def _done(self, day: str, step: str, fp: str, previous: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The run log row that makes ``step`` of ``day`` finished work, or None."""
        rows = [r for r in previous if r["step"] == step and r["status"] in DONE]
        if not rows:
            return None
        last = max(rows, key=lambda r: (r["started_at"] or _dt.datetime.min))
        if last["fingerprint"] != fp:
            logger.info("daily %s %s: inputs changed since run %s: running it again", day, step, last["run_id"])
            return None
        version = last["output_version"]
        if step == "train":
            return last
        spec = {"sequences": t.USER_SEQUENCES, "training_set": t.TRAINING_EXAMPLES, "feature_stats": t.FEATURE_STATS,
                "publish": t.USER_REPRESENTATIONS}[step]
        if version is None or not self.tables.exists(spec):
            return None
        if step == "training_set":
            return last if self._covers(training_range(day, self.cfg)) else None
        now = self._files(spec, [day])
        if not now or now != self._files(spec, [day], int(version)):
            logger.info("daily %s %s: partition dt=%s of %s changed since v%s: running it again", day, step, day,
                        spec.name, version)
            return None
        return last

    def _no_later_build(self, day: str, step: str) -> None:
        """Refuse to build or train an old day once a training-set build ends after it (a re-run of an old
        day whose work is not done): its range has been relabelled by the later days."""
        end = latest_build_end(self.tables)
        if end is None or end <= day:
            return
        if step == "training_set":
            days = training_range(day, self.cfg)
            raise PlatformError(
                f"{t.TRAINING_EXAMPLES.name} holds a build ending {end}, after {day}: building {days[0]}..{day} "
                f"would make later days validation and test days again; leave training_set out of daily.steps "
                f"for this day, or rebuild with jobs.build_training_set over the whole range")
        raise PlatformError(
            f"{t.TRAINING_EXAMPLES.name} holds a build ending {end}, after {day}: the examples {day} would train "
            f"and gate on have been relabelled by the later days (and the champion moved on); leave train out of "
            f"daily.steps for this day")

    def _covers(self, days: Sequence[str]) -> bool:
        """The training set (and with ``training.hybrid`` the hybrid examples) holds every day of ``days``."""
        specs = [t.TRAINING_EXAMPLES, *([t.HYBRID_EXAMPLES] if self.cfg.training.hybrid else [])]
        return all(self.tables.exists(s) and set(days) <= set(self.tables.partitions(s)) for s in specs)

    def _files(self, spec: t.TableSpec, days: Sequence[str], version: int | None = None) -> str:
        """A digest of the Parquet files of partitions ``days`` ("" when none or no table)."""
        if not self.tables.exists(spec):
            return ""
        files = sorted(self.tables.files(spec, list(days), version))
        return digest(files) if files else ""

    def _versions(self, *specs: t.TableSpec) -> dict[str, int | None]:
        return {s.name: self.tables.version(s) if self.tables.exists(s) else None for s in specs}

    # ------------------------------------------------------------------ the run log
    def _log_rows(self, day: str) -> list[dict[str, Any]]:
        if not self.tables.exists(t.DAILY_RUNS):
            return []
        return [r.asDict() for r in self.tables.read(t.DAILY_RUNS, dt=day).collect()]  # a few rows per run

    def _log(self, results: Sequence[StepResult]) -> None:
        """Append ``results`` to ``ops/daily_runs`` (the fingerprints also in the commit metadata)."""
        from pyspark.sql import types as T

        rows = [r.row(self.run_id) for r in results]
        schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in t.DAILY_RUNS.schema.fields])
        df = self.tables.spark.createDataFrame([tuple(r[c] for c in t.DAILY_RUNS.columns) for r in rows], schema)
        self.tables.write(df, t.DAILY_RUNS, "append", metadata={
            "job": "daily", "run_id": self.run_id, "dt": results[0].day,
            "steps": {r.step: {"status": r.status, "fingerprint": r.fingerprint, "output_version": r.output_version}
                      for r in results}})

    def _day_command(self, day: str) -> str:
        return command("jobs.daily", self.base, ["--date", day])


def run_days(day_runner: Day, days: Sequence[str], continue_on_failure: bool = False) -> list[DayReport]:
    """Run ``days`` in order; stop after the first failed day unless ``continue_on_failure``."""
    reports = []
    for day in days:
        report = day_runner.run(day)
        reports.append(report)
        if report.failed is not None and not continue_on_failure:
            break
    return reports


def failure_line(reports: Sequence[DayReport], all_days: Sequence[str], base: Sequence[str]) -> str | None:
    """One line naming the failed step(s) and the command that re-runs from the first failed day, or None."""
    failed = [(r.day, r.failed) for r in reports if r.failed is not None]
    if not failed:
        return None
    first = failed[0][0]
    rest = [d for d in all_days if d >= first]
    again = ["--date", first] if len(rest) == 1 else ["--start", first, "--end", rest[-1]]
    named = "; ".join(f"{day} step {res.step}: {res.message}" for day, res in failed)
    return f"{named}; re-run: {command('jobs.daily', base, again)}"
