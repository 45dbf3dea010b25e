"""What every job shares: argument parsing, config loading, logging, the one-line failure."""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from core.config import Config, load_config
from core.errors import PlatformError

logger = logging.getLogger(__name__)


def parse_date(value: str) -> _dt.date:
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got '{value}'") from None


def base_parser(job: str, description: str, *, date: bool | str = True) -> argparse.ArgumentParser:
    """Parser with the options every job has: ``--config``, ``--set`` and (usually) ``--date``.

    Args:
        date: True: ``--date`` is required; "optional": may be omitted; "range": required
            ``--start`` and ``--end`` (the first and last day of examples) instead; False: no ``--date``.
    """
    p = argparse.ArgumentParser(prog=f"jobs.{job}", description=description)
    p.add_argument("--config", default="conf/local.yaml", help="config file (default conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.batch_size=512 (repeatable)")
    p.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")
    if date == "range":
        p.add_argument("--start", type=parse_date, required=True, help="first day of examples (UTC)")
        p.add_argument("--end", type=parse_date, required=True, help="last day of examples (UTC)")
    elif date:
        p.add_argument("--date", type=parse_date, required=date is True, help="UTC date YYYY-MM-DD")
    return p


@dataclass(frozen=True)
class JobContext:
    """What a job's ``run`` function receives."""

    job: str
    args: argparse.Namespace
    cfg: Config
    run_id: str


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "urllib3", "petastorm", "alembic", "matplotlib", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # progress lines of long work (rate, ETA) are shown even when a scheduler asks for warnings only
    progress = logging.getLogger("training.progress")
    progress.setLevel(min(progress.getEffectiveLevel(), logging.INFO))


def run_job(job: str, parser: argparse.ArgumentParser, run: Callable[[JobContext], str],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, load the config, call ``run`` and print its one-line summary.

    A failure prints one line ``<job> failed: <reason>`` on stderr and returns 1 (2 for usage
    errors, as argparse does). The traceback is logged at DEBUG level.
    """
    args = parser.parse_args(argv)
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start and end and end < start:
        parser.error(f"--end {end} is before --start {start}")
    _configure_logging(args.log_level)
    started = time.time()
    try:
        cfg = load_config(args.config, args.overrides)
        summary = run(JobContext(job, args, cfg, uuid.uuid4().hex[:12]))
    except PlatformError as exc:
        logger.debug("job %s failed", job, exc_info=True)
        print(f"{job} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the scheduler, traceback in the log
        logger.error("job %s failed with an unexpected error", job, exc_info=True)
        print(f"{job} failed: {failure_reason(exc)}", file=sys.stderr)
        return 1
    print(summary)
    print(f"{job} finished in {time.time() - started:.0f}s", file=sys.stderr)
    return 0


_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception|Exit)\b.*)$")


def failure_reason(exc: BaseException) -> str:
    """One line for an unexpected exception: the innermost ``XxxError: ...`` line when the
    message carries a remote traceback (Spark's Python workers), else the first line."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    inner = [ln for ln in lines[1:] if _ERROR_LINE.match(ln)]
    reason = inner[-1] if inner else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason[:500]}"


def main_entry(job: str, parser: argparse.ArgumentParser, run: Callable[[JobContext], str]) -> None:
    """``sys.exit`` wrapper used by each job's ``if __name__ == "__main__"`` block."""
    code = run_job(job, parser, run)
    if "pyspark.sql.session" not in sys.modules:  # the job never started Spark (e.g. a lookup with Arrow)
        sys.exit(code)
    try:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
    except Exception:  # noqa: BLE001 - stopping Spark must not change the exit code
        logger.debug("spark stop failed", exc_info=True)
    sys.exit(code)


def ds(day: _dt.date) -> str:
    """Partition string of a date."""
    return day.isoformat()
