"""What the benchmark scripts share: a worker process whose peak memory is sampled, and the
results file with the command that produced it."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psutil

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"


def commit() -> str:
    """This checkout's short commit, with ``+changes`` when its tracked files other than the results
    (which a resumed benchmark rewrites itself) differ from it (``unknown`` outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        changed = git("status", "--porcelain", "-uno", "--", ".", ":(exclude)benchmarks/results")
        return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def whole_tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


@dataclass(frozen=True)
class Sampled:
    """A finished process: exit code, wall seconds, the peak summed RSS (bytes) of the processes
    ``processes`` picked, of the process alone and of its anonymous part (RSS minus file-backed pages, such
    as memory-mapped files the kernel can drop), its stdout and the end of its stderr."""

    returncode: int
    seconds: float
    peak_rss: int
    peak_root_rss: int
    peak_root_anon: int
    stdout: str
    stderr_tail: str


def run_sampled(cmd: Sequence[str],
                processes: Callable[[psutil.Process], list[psutil.Process]] = whole_tree) -> Sampled:
    """Run ``cmd`` from the checkout's root, sampling every 0.2 s the summed RSS of ``processes(proc)`` and
    the RSS of the process itself; stdout is captured, stderr kept in a temporary file (its last 4,000
    characters are returned)."""
    err = tempfile.TemporaryFile(mode="w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    peak = peak_root = peak_anon = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_root, peak_anon
        me = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                mem = me.memory_info()
                peak_root, peak_anon = max(peak_root, mem.rss), max(peak_anon, mem.rss - mem.shared)
                peak = max(peak, sum(p.memory_info().rss for p in processes(me)))
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    err.seek(0)
    tail = err.read()[-4000:]
    err.close()
    return Sampled(proc.returncode, seconds, peak, peak_root, peak_anon, out, tail)


def run_worker(module: str, args: list[str],
               processes: Callable[[psutil.Process], list[psutil.Process]] = whole_tree) -> dict[str, float]:
    """Run ``python -m <module> --worker <args>``; its last stdout line is a JSON result, to which
    ``peak_rss_mb`` (the peak summed RSS of ``processes(worker)``, sampled every 0.2 s) and
    ``peak_anon_mb`` (the worker's own peak RSS without file-backed pages) are added."""
    res = run_sampled([sys.executable, "-m", module, "--worker", *args], processes)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker {module} {args} failed (exit {res.returncode}); its stderr "
                           f"ends with:\n{res.stderr_tail}")
    result: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = res.peak_rss / 2**20
    result["peak_anon_mb"] = res.peak_root_anon / 2**20
    return result


# DUPN-all's heads alone, whatever conf/local.yaml trains (the detached hybrid since 3348ece): the benchmarks that
# measure DUPN-all (the comparison's base, the slices, ESMM, the training speed) put these before their overrides
DUPN_ALL = ("training.hybrid=false", "training.model.prior_pieces=false", "training.model.side_detached=false")


def set_args(overrides: Sequence[str]) -> list[str]:
    """``KEY=VALUE`` overrides as a job's command-line arguments (``--set KEY=VALUE`` each)."""
    return [a for o in overrides for a in ("--set", o)]


def job_command(config: str, overrides: Sequence[str], module: str, *args: str) -> list[str]:
    """The command that runs a platform job (``python -m module``) with a config and overrides, logging
    warnings only."""
    return [sys.executable, "-m", module, "--config", config, *set_args(overrides), "--log-level", "WARNING", *args]


def run_job(config: str, overrides: Sequence[str], module: str, *args: str) -> None:
    """Run a platform job (``python -m module``) as a benchmark's step; a failure raises
    :class:`core.errors.PlatformError` naming the job and its command line (the benchmark's entry point turns
    it into its one-line exit)."""
    from core.errors import PlatformError

    cmd = job_command(config, overrides, module, *args)
    logger.info("$ %s", " ".join(cmd[2:]))
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        raise PlatformError(f"{module} failed (exit {code}): {' '.join(cmd[2:])}")


def machine() -> str:
    """The machine a result was measured on: cores, memory, platform."""
    import platform

    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}, " \
        f"Python {platform.python_version()}"


def machine_line() -> str:
    """The machine a result was measured on (cores, memory, platform) and the date."""
    return f"Measured on {machine()}, {dt.date.today()}."


def write_result(path: Path | None, command: str, body: str, measured: str | None = None) -> None:
    """Write ``body`` (markdown) under a comment naming the command, date and core count; ``measured``: the
    date of a saved run rendered again today (the comment names both)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    today = dt.date.today().isoformat()
    when = f"measured {measured}, rendered {today}" if measured and measured != today else today
    path.write_text(f"<!-- generated by: {command} ({when}, {os.cpu_count()} cores) -->\n{body}\n")


def latest_published(cfg: Any, bench: str) -> tuple[Any, int, str, list[str]]:
    """(tables without Spark, table version, date, local Parquet files) of the latest published partition
    of ``outputs/user_representations``; exits naming ``bench`` when the lake is not the embedded engine's or
    the files are not local."""
    from core import tables as t
    from core.delta import get_tables_without_spark
    from features import representations as reps

    tables = get_tables_without_spark(cfg)
    if tables is None:
        raise SystemExit(f"{bench}: delta.engine is spark; this benchmark measures the embedded engine's (rs) path")
    version, day = reps.resolve(tables)
    files = reps.local_paths(tables.files(t.USER_REPRESENTATIONS, dt=day, version=version))
    if not files:
        raise SystemExit(f"{bench}: {t.USER_REPRESENTATIONS.name} dt={day} has no local files")
    return tables, version, day, files


@contextmanager
def exits_on_platform_error(name: str) -> Iterator[None]:
    """Turn a :class:`core.errors.PlatformError` raised inside (a failed job, a missing table) into the
    benchmark's one-line exit, ``<name>: <the error>``, without a traceback."""
    from core.errors import PlatformError

    try:
        yield
    except PlatformError as exc:
        raise SystemExit(f"{name}: {exc}") from None


def bench_main(name: str, args: argparse.Namespace, run: Callable[[argparse.Namespace, str], str],
               argv: Sequence[str] | None) -> None:
    """A benchmark's entry point: log lines with times (Py4J and Petastorm at WARNING), ``run(args, command)``
    with the command line that reproduces it, its text printed; a :class:`core.errors.PlatformError`
    ends the run with one line naming the benchmark (:func:`exits_on_platform_error`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = f"python -m benchmarks.{name} " + " ".join(argv if argv is not None else sys.argv[1:])
    with exits_on_platform_error(name):
        text = run(args, command.strip())
    print(text)
