"""training.ema_decay: validation scores, and training keeps, a moving average of the weights."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from core.config import TrainingConfig
from training.data import Batch, TensorBatches
from training.spec import ModelSpec
from training.step import TrainTask
from training.trainer import TrainPlan, load_state, train_process


def _train(spec: ModelSpec, batch: Batch, decay: float, monkeypatch: pytest.MonkeyPatch,
           select: bool = True, valid: bool = False) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    seen: list[dict[str, torch.Tensor]] = []
    step = TrainTask.step

    def recording(self: TrainTask, b: Batch) -> dict[str, float]:
        out = step(self, b)
        seen.append({k: v.detach().clone() for k, v in self.model.named_parameters()})
        return out

    monkeypatch.setattr(TrainTask, "step", recording)
    data = {"train": TensorBatches(batch, 8, seed=0)}
    if valid:
        data["valid"] = TensorBatches(batch, 32, shuffle=False)
    cfg = TrainingConfig(optimizer="adam", lr=0.01, batch_size=8, torch_threads=1, ema_decay=decay)
    plan = TrainPlan(spec=spec.to_dict(), training=cfg, train_files=(), valid_files=(), epochs=2, select=select,
                     progress=False)
    return train_process(plan, data), seen


def test_the_kept_weights_are_the_moving_average_of_every_steps_weights(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec, batch, decay = make_spec(), make_batch(n=32, seed=4), 0.8
    result, seen = _train(spec, batch, decay, monkeypatch)
    assert result is not None and len(seen) == 8  # 2 epochs of 4 batches
    kept = load_state(result.state)["weights"]
    for name in ("tower.projection.weight", "heads.ctr.net.0.weight" if "heads.ctr.net.0.weight" in kept else
                 "tower.projection.bias"):
        want = seen[0][name]
        for weights in seen[1:]:
            want = decay * want + (1 - decay) * weights[name]
        torch.testing.assert_close(kept[name], want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(kept[name], seen[-1][name])  # not the last step's weights
    # buffers (frozen statistics, category prices) are the model's own
    plain, _ = _train(spec, batch, 0.0, monkeypatch)
    frozen = {k for k in kept if "category_prices" in k or k.endswith((".mean", ".inv_std"))}
    assert frozen and all(torch.equal(kept[k], load_state(plain.state)["weights"][k]) for k in frozen)
    torch.testing.assert_close(load_state(plain.state)["weights"]["tower.projection.weight"],
                               seen[-1]["tower.projection.weight"])  # without it: the last step's weights


def test_incremental_training_keeps_its_last_weights(make_spec: Callable[..., ModelSpec],
                                                     make_batch: Callable[..., Batch],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without selection (a day's incremental training) the average is not used: its few steps would
    barely move an average that remembers hundreds."""
    result, seen = _train(make_spec(), make_batch(n=32, seed=4), 0.8, monkeypatch, select=False)
    torch.testing.assert_close(load_state(result.state)["weights"]["tower.projection.weight"],
                               seen[-1]["tower.projection.weight"])


def test_validation_selects_among_the_averaged_weights(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec, batch = make_spec(), make_batch(n=32, seed=4)
    result, seen = _train(spec, batch, 0.5, monkeypatch, valid=True)
    assert result is not None and result.evals and result.selected
    kept = load_state(result.state)["weights"]["tower.projection.weight"]
    assert all(not torch.allclose(kept, w["tower.projection.weight"]) for w in seen)
