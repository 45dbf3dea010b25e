"""Training steps per second, epoch by epoch, read from a training run's progress log.

A slowdown inside a run (e.g. denormal floats once Adam's moments of unused embedding rows decay below
1.2e-38: ``training.step.prepare_torch``) shows as one epoch slower than the others of the same run, a
ratio that the machine's load from one run to the next does not confound. Intervals between two
progress lines that contain a validation scoring are left out, so the rate is that of the steps alone.

    python -m benchmarks.step_rates demo.log [other.log ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
STEP = re.compile(STAMP + r".*train: step ([\d,]+)/([\d,]+)")
VALIDATION = re.compile(STAMP + r".*validation at step (\d+) \(epoch ([\d.]+)\)")


@dataclass(frozen=True)
class EpochRate:
    epoch: int
    steps: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def _time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def epoch_rates(lines: Iterable[str], steps_per_epoch: int | None = None) -> list[EpochRate]:
    """Steps per second of each epoch of the first training run in ``lines`` (a progress log).

    ``steps_per_epoch`` defaults to what the validation lines imply (their step over their epoch)."""
    steps: list[tuple[float, int]] = []
    planned = 0
    scorings: list[tuple[float, int, float]] = []
    for line in lines:
        if (m := STEP.search(line)) is not None:
            step = int(m.group(2).replace(",", ""))
            if steps and step < steps[-1][1]:
                break  # a second run in the same log
            steps.append((_time(m.group(1)), step))
            planned = int(m.group(3).replace(",", ""))
        elif (v := VALIDATION.search(line)) is not None:
            scorings.append((_time(v.group(1)), int(v.group(2)), float(v.group(3))))
    if steps_per_epoch is None:
        if not scorings:
            raise SystemExit("no validation line in the log to infer the steps per epoch from: pass --steps-per-epoch")
        steps_per_epoch = round(scorings[0][1] / scorings[0][2])
    paused = [t for t, _, _ in scorings]
    # the planned steps are an estimate (batches are whole groups): steps past it belong to the last epoch
    last = max(1, round(planned / steps_per_epoch)) - 1
    totals: dict[int, list[float]] = {}
    for (t0, s0), (t1, s1) in zip(steps, steps[1:]):
        if any(t0 < t <= t1 for t in paused) or s1 <= s0:
            continue
        acc = totals.setdefault(min(s0 // steps_per_epoch, last), [0.0, 0.0])
        acc[0] += s1 - s0
        acc[1] += t1 - t0
    return [EpochRate(k + 1, int(v[0]), v[1]) for k, v in sorted(totals.items())]


def render(logs: Sequence[Path], steps_per_epoch: int | None) -> str:
    out = ["| log | epoch | steps timed | steps/s | vs epoch 1 |", "|---|---:|---:|---:|---:|"]
    for log in logs:
        rates = epoch_rates(log.read_text(errors="replace").splitlines(), steps_per_epoch)
        for r in rates:
            out.append(f"| {log} | {r.epoch} | {r.steps:,} | {r.rate:.2f} | {r.rate / rates[0].rate:.2f} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="logs holding a training run's progress lines")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    args = p.parse_args(argv)
    print(render(args.logs, args.steps_per_epoch))


if __name__ == "__main__":
    main()
