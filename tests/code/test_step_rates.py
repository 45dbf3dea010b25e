"""benchmarks.step_rates: steps per second per epoch from a training progress log."""
from __future__ import annotations

import pytest

from benchmarks.step_rates import epoch_rates


def _log() -> list[str]:
    """A run of 3 epochs of 100 steps: 10 steps/s in epochs 1 and 2, 5 in epoch 3, a 30 s validation
    pause at step 50 and a second (incremental) run after it."""
    lines, t, step = [], 0.0, 0
    while step < 300:
        step += 10
        t += 1.0 if step <= 200 else 2.0
        if step == 60:
            lines.append(f"2026-12-06 10:00:{t - 0.5:06.3f}".replace(".", ",")
                         + " training.progress: validation at step 50 (epoch 0.50): score 0.7")
            t += 30.0
        stamp = f"2026-12-06 10:{int(t // 60):02d}:{t % 60:06.3f}".replace(".", ",")
        lines.append(f"{stamp} training.progress: train: step {step}/300, 1,000 examples/s, ctr=0.1")
    lines.append("2026-12-06 11:00:00,000 training.progress: train: step 5/9, 1,000 examples/s")
    return lines


def test_each_epoch_is_timed_without_the_validation_pauses_or_the_next_run() -> None:
    rates = epoch_rates(_log())
    assert [r.epoch for r in rates] == [1, 2, 3]
    assert rates[0].steps == 80  # 9 intervals of 10 steps, less the one holding the validation pause
    assert [r.rate for r in rates] == [pytest.approx(10.0), pytest.approx(10.0), pytest.approx(5.0)]


def test_the_steps_per_epoch_can_be_given() -> None:
    rates = epoch_rates(_log(), steps_per_epoch=150)
    assert [r.epoch for r in rates] == [1, 2]
    assert rates[1].rate < rates[0].rate
