"""Progress of long work: a bar on a terminal, log lines with rate and ETA elsewhere."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Mapping

logger = logging.getLogger(__name__)


def ensure_output() -> None:
    """Make progress lines reach the process's output when nothing else configured logging: in a
    training process that Spark's TorchDistributor started (its output is piped to the job's stdout),
    the job's own logging set-up does not exist."""
    if logging.getLogger().handlers or logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Reports a loop's progress every ``every_s`` seconds: steps (of ``total`` if known), items/s,
    the latest values (e.g. loss per task) and the ETA.

    On a terminal (stderr is a TTY) it draws a tqdm bar; otherwise it logs one line per report,
    which schedulers and log collectors keep.
    """

    def __init__(self, label: str, total: int | None, unit: str = "samples", every_s: float = 10.0,
                 enabled: bool = True, log: logging.Logger | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.enabled = enabled
        self.log = log or logger
        self.steps = 0
        self.items = 0
        self.started = time.perf_counter()
        self.last = self.started
        self.values: dict[str, float] = {}
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="step", leave=False, dynamic_ncols=True)

    def update(self, items: int, values: Mapping[str, float] | None = None) -> None:
        """One step that processed ``items``; ``values`` are shown with the next report."""
        self.steps += 1
        self.items += items
        if values:
            self.values.update(values)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.report()

    def rate(self) -> float:
        return self.items / max(time.perf_counter() - self.started, 1e-9)

    def describe(self) -> str:
        elapsed = time.perf_counter() - self.started
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.steps:
            eta = f", ETA {_eta(elapsed / self.steps * max(self.total - self.steps, 0))}"
        shown = " ".join(f"{k}={v:.4f}" for k, v in self.values.items())
        return (f"{self.label}: step {self.steps}{of}, {self.rate():,.0f} {self.unit}/s, "
                f"elapsed {_eta(elapsed)}{eta}" + (f", {shown}" if shown else ""))

    def report(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(f"{k}={v:.3f}" for k, v in self.values.items()), refresh=False)
            self.bar.set_description(f"{self.label} {self.rate():,.0f} {self.unit}/s")
        else:
            self.log.info("%s", self.describe())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
