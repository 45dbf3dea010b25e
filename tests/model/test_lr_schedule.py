"""training.lr_schedule: the learning rate over a run (constant, linear or cosine decay, warm-up)."""
from __future__ import annotations

import math
from typing import Callable

import pytest

from core.config import LRScheduleConfig, TrainingConfig
from training.data import Batch, TensorBatches
from training.spec import ModelSpec
from training.step import lr_factor
from training.trainer import TrainPlan, train_process


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_decay_runs_from_lr_to_its_final_share_over_its_epochs_and_holds_there(kind: str) -> None:
    schedule = LRScheduleConfig(kind=kind, epochs=2, final_fraction=0.1)
    factors = [lr_factor(schedule, s, steps_per_epoch=10, epochs=4) for s in range(40)]
    assert factors[0] == 1.0
    assert all(a > b for a, b in zip(factors[:20], factors[1:21]))  # falls at every step of the 2 epochs
    assert factors[20:] == [pytest.approx(0.1)] * 20  # then holds the final share
    halfway = 0.1 + 0.9 * (0.5 if kind == "linear" else 0.5 * (1 + math.cos(math.pi / 2)))
    assert factors[10] == pytest.approx(halfway)
    if kind == "cosine":  # a cosine stays high longer than a line at the first quarter
        assert factors[5] > 0.1 + 0.9 * 0.75


def test_the_decay_spans_the_run_when_its_epochs_are_unset_or_beyond_the_cap() -> None:
    for schedule in (LRScheduleConfig(kind="linear"), LRScheduleConfig(kind="linear", epochs=9)):
        factors = [lr_factor(schedule, s, steps_per_epoch=5, epochs=2) for s in range(10)]
        assert factors[5] == pytest.approx(0.5) and factors[9] == pytest.approx(0.1)


def test_warm_up_rises_linearly_then_the_decay_starts_from_lr() -> None:
    schedule = LRScheduleConfig(kind="linear", epochs=1, warmup_steps=4)
    factors = [lr_factor(schedule, s, steps_per_epoch=12, epochs=1) for s in range(12)]
    assert factors[:4] == [pytest.approx(x) for x in (0.25, 0.5, 0.75, 1.0)]
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5)
    assert [lr_factor(LRScheduleConfig(), s, 10, 2) for s in (0, 7, 19)] == [1.0, 1.0, 1.0]


def test_training_steps_at_the_scheduled_rate_and_records_it(make_spec: Callable[..., ModelSpec],
                                                             make_batch: Callable[..., Batch]) -> None:
    batch = make_batch(n=32, seed=4)
    cfg = TrainingConfig(optimizer="adam", lr=0.01, batch_size=8, torch_threads=1,
                         lr_schedule=LRScheduleConfig(kind="linear", final_fraction=0.2))
    plan = TrainPlan(spec=make_spec().to_dict(), training=cfg, train_files=(), valid_files=(), epochs=2,
                     select=False, progress=False, log_every=1)
    result = train_process(plan, {"train": TensorBatches(batch, 8, seed=0)})
    assert result is not None
    rates = [row["lr"] for row in result.steps]
    assert len(rates) == 8  # 2 epochs of 4 batches
    assert rates == [pytest.approx(0.01 * (0.2 + 0.8 * (1 - s / 8))) for s in range(8)]
