"""PetastormSource re-reads a pass that yielded nothing (petastorm 0.13.1's start-up race), and the
trainer refuses an epoch that read no batch instead of registering an untrained model."""
from __future__ import annotations

import logging
from typing import Iterator

import pytest
import torch

from training.data import Batch, PetastormSource


def test_an_empty_pass_is_read_again(monkeypatch, caplog) -> None:
    passes: list[int] = []

    def one_pass(self: PetastormSource, epoch: int) -> Iterator[Batch]:
        passes.append(epoch)
        if len(passes) >= 3:                      # the race hit the first two passes
            yield {"x": torch.arange(4)}

    monkeypatch.setattr(PetastormSource, "_one_pass", one_pass)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        got = list(PetastormSource(files=("file:///a.parquet",)).batches(epoch=5))
    assert [b["x"].tolist() for b in got] == [[0, 1, 2, 3]] and passes == [5, 5, 5]
    assert sum("yielded no row; re-reading" in r.getMessage() for r in caplog.records) == 2


def test_a_pass_that_stays_empty_ends_after_the_attempts(monkeypatch) -> None:
    calls: list[int] = []

    def one_pass(self: PetastormSource, epoch: int) -> Iterator[Batch]:
        calls.append(epoch)
        return iter(())

    monkeypatch.setattr(PetastormSource, "_one_pass", one_pass)
    assert list(PetastormSource(files=("file:///a.parquet",), empty_pass_attempts=3).batches()) == []
    assert len(calls) == 3
    assert list(PetastormSource(files=()).batches()) == [] and len(calls) == 3   # no file: no pass at all


@pytest.mark.parametrize("in_memory", [False, True])
def test_training_fails_when_an_epoch_reads_no_batch(make_spec, make_batch, in_memory: bool) -> None:  # noqa: ANN001
    from core.config import TrainingConfig
    from core.errors import PlatformError
    from training.data import TensorBatches
    from training.trainer import TrainPlan, train_process

    plan = TrainPlan(spec=make_spec().to_dict(), training=TrainingConfig(torch_threads=1), train_files=(),
                     valid_files=(), epochs=1, progress=False)
    empty = {k: v[:0] for k, v in make_batch(n=4).items()}
    data = {"train": TensorBatches(empty, batch_size=8)} if in_memory else None
    with pytest.raises(PlatformError, match="epoch 0: rank 0 of 1 read no training batch from 0 files"):
        train_process(plan, data=data)
