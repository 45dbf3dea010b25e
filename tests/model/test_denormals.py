"""training.step.prepare_torch: Adam with weight decay leaves denormal floats in the rows no batch
touches, which slow every step down on x86; the trainer and the transfer job flush them to zero."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch

from core.config import TrainingConfig
from training.data import Batch, TensorBatches
from training.spec import ModelSpec
from training.step import prepare_torch
from training.trainer import TrainPlan, train_process

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


@pytest.fixture(autouse=True)
def _restore_flush() -> Iterator[None]:
    yield
    torch.set_flush_denormal(False)  # the process-wide setting of the rest of the suite


def _denormals(tensors: list[torch.Tensor]) -> int:
    return sum(int(((t != 0) & (t.abs() < SMALLEST_NORMAL)).sum()) for t in tensors)


def _unused_rows_after_adam(steps: int) -> int:
    """Denormal values in an embedding table and its Adam moments after ``steps`` steps that touch 20 of
    its 2,000 rows, with weight decay (the platform's optimiser)."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(2000, 8)
    head = torch.nn.Linear(8, 1)
    opt = torch.optim.Adam([*table.parameters(), *head.parameters()], lr=2e-3, weight_decay=3e-4)
    for _ in range(steps):
        loss = head(table(torch.randint(0, 20, (32,)))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = opt.state[table.weight]
    return _denormals([table.weight.detach(), state["exp_avg"], state["exp_avg_sq"]])


def test_adam_with_weight_decay_leaves_no_denormals_once_prepared() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormal floats (no SSE3): nothing to prepare")
    assert _unused_rows_after_adam(1600) > 0  # the slow path exists without the flush
    prepare_torch(1)
    assert torch.get_num_threads() == 1
    assert _unused_rows_after_adam(1600) == 0


def test_training_runs_with_denormals_flushed(make_spec: Callable[..., ModelSpec],
                                              make_batch: Callable[..., Batch]) -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormal floats (no SSE3): nothing to prepare")
    assert torch.tensor([SMALLEST_NORMAL / 4]).item() > 0
    cfg = TrainingConfig(optimizer="adam", lr=0.01, batch_size=8, torch_threads=1, weight_decay=3e-4)
    plan = TrainPlan(spec=make_spec().to_dict(), training=cfg, train_files=(), valid_files=(), epochs=1,
                     select=False, progress=False)
    assert train_process(plan, {"train": TensorBatches(make_batch(n=16, seed=4), 8, seed=0)}) is not None
    assert torch.tensor([SMALLEST_NORMAL / 4]).item() == 0.0  # the trainer flushed them
