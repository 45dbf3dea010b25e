"""Task weighting strategies on toy problems with a known answer (LibMTL-style property tests)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.config import WeightingConfig
from training.weighting import FixedWeighting, GradNorm, UncertaintyWeighting, build_weighting


class ToyTwoTask(nn.Module):
    """A shared layer W and two linear heads; x -> (head_a, head_b)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 8)
        self.a = nn.Linear(8, 1)
        self.b = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return self.a(h).squeeze(-1), self.b(h).squeeze(-1)


def _toy_data(seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, torch.sin(x[:, 0]) + 0.5 * x[:, 1]


def test_fixed_weighting_sums_weighted_losses() -> None:
    w = FixedWeighting(["ctr", "ppp"], {"ppp": 0.5})
    total = w.combine({"ctr": torch.tensor(2.0), "ppp": torch.tensor(4.0)})
    assert float(total) == 4.0
    assert w.weights() == {"ctr": 1.0, "ppp": 0.5}
    with pytest.raises(ValueError, match="unknown tasks"):
        FixedWeighting(["ctr"], {"clicks": 1.0})
    with pytest.raises(KeyError, match="lack tasks"):
        w.combine({"ctr": torch.tensor(1.0)})


def test_uncertainty_weighting_trusts_the_noisy_task_less() -> None:
    torch.manual_seed(0)
    x, y = _toy_data(0)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y_clean, y_noisy = y, y + 2.0 * noise
    model, weighting = ToyTwoTask(), UncertaintyWeighting(["ctr", "l2r"])
    opt = torch.optim.Adam(list(model.parameters()) + weighting.main_parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        a, b = model(x)
        losses = {"ctr": ((a - y_clean) ** 2).mean(), "l2r": ((b - y_noisy) ** 2).mean()}
        weighting.combine(losses).backward()
        opt.step()
    w = weighting.weights()
    assert w["l2r"] < 0.5 * w["ctr"], w
    # At the optimum exp(-s) ≈ 1 / L for each task.
    assert w["l2r"] == pytest.approx(1 / float(losses["l2r"].detach()), rel=0.3)


def test_uncertainty_weighting_leaves_absent_tasks_alone() -> None:
    weighting = UncertaintyWeighting(["ctr", "ppp"])
    losses = {"ctr": torch.tensor(2.0), "ppp": torch.tensor(0.0)}
    weighting.combine(losses, {"ctr": 5, "ppp": 0}).backward()
    grad = weighting.log_vars.grad
    assert grad is not None and float(grad[1]) == 0.0 and float(grad[0]) != 0.0


@pytest.mark.parametrize("max_log_var", [1.0, 2.0])
def test_uncertainty_weights_stay_bounded_when_a_loss_goes_to_zero(max_log_var: float) -> None:
    """Task ctr's target is learnable exactly (its loss goes to ~0 and stays there for hundreds of steps):
    unbounded, its weight 1 / L would grow without limit; clamped, exp(-s) never exceeds e^max_log_var."""
    torch.manual_seed(0)
    x, y = _toy_data(2)
    y_noisy = y + 1.0 * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    model, weighting = ToyTwoTask(), UncertaintyWeighting(["ctr", "l2r"], max_log_var=max_log_var)
    opt = torch.optim.Adam(list(model.parameters()) + weighting.main_parameters(), lr=0.03)
    bound = math.exp(max_log_var)
    largest, tiny_steps = 0.0, 0
    for _ in range(400):
        opt.zero_grad()
        a, b = model(x)
        losses = {"ctr": (a ** 2).mean(), "l2r": ((b - y_noisy) ** 2).mean()}
        total = weighting.combine(losses)
        assert torch.isfinite(total)
        total.backward()
        opt.step()
        w = weighting.weights()
        largest = max(largest, w["ctr"], w["l2r"])
        tiny_steps += float(losses["ctr"].detach()) < 1e-3
    assert tiny_steps > 100                                   # the loss really sat near 0 for many steps
    assert 1 / float(losses["ctr"].detach()) > 10 * bound     # ... where the unbounded optimum is far above
    assert largest <= bound * (1 + 1e-6)
    assert w["ctr"] == pytest.approx(bound, rel=1e-6)          # the bound binds
    assert 0.3 < w["l2r"] < 2.0                                # the noisy task keeps about 1 / L
    # the total uses the clamped log-variance: e^bound * L_ctr - max_log_var for the pinned task
    s = weighting.log_vars.detach().clamp(-max_log_var, max_log_var)
    expected = sum(math.exp(-float(s[k])) * float(losses[t].detach()) + float(s[k])
                   for k, t in enumerate(["ctr", "l2r"]))
    assert float(weighting.combine(losses).detach()) == pytest.approx(expected, rel=1e-5)


def test_uncertainty_weights_are_bounded_on_both_sides() -> None:
    weighting = UncertaintyWeighting(["ctr", "l2r"], max_log_var=1.5)
    opt = torch.optim.Adam(weighting.main_parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        weighting.combine({"ctr": torch.tensor(1e-8), "l2r": torch.tensor(1e4)}).backward()
        opt.step()
    w = weighting.weights()
    assert w["ctr"] == pytest.approx(math.exp(1.5), rel=1e-6) and w["l2r"] == pytest.approx(math.exp(-1.5), rel=1e-6)


def test_uncertainty_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="uncertainty_max_log_var must be > 0"):
        UncertaintyWeighting(["ctr"], max_log_var=0.0)
    assert build_weighting(WeightingConfig(kind="uncertainty", uncertainty_max_log_var=3.0), ["ctr"]).max_log_var == 3.0


def _scheduled_losses(values: dict[str, float], shared: nn.Parameter) -> dict[str, torch.Tensor]:
    """Losses with the given values whose gradient on the shared parameter has norm 1 for every task."""
    return {t: v + (shared[k] - shared[k].detach()) for k, (t, v) in enumerate(values.items())}


def test_gradnorm_moves_weight_toward_the_slower_training_task() -> None:
    """Equal gradient norms, different training rates: L_ctr falls fastest, L_ppp slowest. GradNorm's
    targets grow with the inverse training rate, so the weights order by slowness and sum to 3."""
    shared = nn.Parameter(torch.zeros(3))
    weighting = GradNorm(["ctr", "l2r", "ppp"], [shared], alpha=1.5, lr=0.05)
    for step in range(100):
        losses = _scheduled_losses({"ctr": 0.97 ** step, "l2r": 0.99 ** step, "ppp": 0.995 ** step}, shared)
        weighting.combine(losses)
        weighting.before_backward(losses)
        assert sum(weighting.weights().values()) == pytest.approx(3.0, abs=1e-5)
    w = weighting.weights()
    assert w["ppp"] > w["l2r"] > 1.0 > w["ctr"], w
    assert w["ppp"] > 1.5 and w["ctr"] < 0.2, w
    # alpha = 0 ignores training rates: with equal gradient norms nothing moves
    flat = GradNorm(["ctr", "l2r", "ppp"], [shared], alpha=0.0, lr=0.05)
    for step in range(100):
        losses = _scheduled_losses({"ctr": 0.97 ** step, "l2r": 0.99 ** step, "ppp": 0.995 ** step}, shared)
        flat.before_backward(losses)
    assert flat.weights() == pytest.approx({"ctr": 1.0, "l2r": 1.0, "ppp": 1.0}, abs=0.02)


def _gradnorm_run(steps: int, absent_b_every: int = 0) -> tuple[GradNorm, list[float]]:
    torch.manual_seed(0)
    x, y = _toy_data(2)
    model = ToyTwoTask()
    weighting = GradNorm(["ctr", "l2r"], [model.shared.weight], alpha=1.5, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.002)
    sums = []
    for step in range(steps):
        opt.zero_grad()
        a, b = model(x)
        # Same kind of target, but task l2r's loss (so its gradient) is 100x larger.
        losses = {"ctr": ((a - y) ** 2).mean(), "l2r": 100.0 * ((b - y) ** 2).mean()}
        counts = {"ctr": 1, "l2r": 0 if absent_b_every and step % absent_b_every == 0 else 1}
        if counts["l2r"] == 0:
            losses["l2r"] = losses["l2r"] * 0.0
        total = weighting.combine(losses, counts)
        weighting.before_backward(losses, counts)
        total.backward()
        opt.step()
        sums.append(sum(weighting.weights().values()))
    return weighting, sums


def test_gradnorm_lowers_the_weight_of_the_task_with_larger_gradients() -> None:
    weighting, sums = _gradnorm_run(60)
    w = weighting.weights()
    assert w["l2r"] < 0.3 < 1.0 < w["ctr"], w
    assert sums == pytest.approx([2.0] * len(sums), abs=1e-5)
    assert weighting.main_parameters() == []


def test_gradnorm_survives_batches_without_a_task() -> None:
    weighting, sums = _gradnorm_run(40, absent_b_every=3)
    w = weighting.weights()
    assert all(torch.isfinite(torch.tensor(v)) for v in w.values())
    assert w["l2r"] < w["ctr"]
    assert sums == pytest.approx([2.0] * len(sums), abs=1e-5)


def test_gradnorm_keeps_an_absent_task_weight() -> None:
    model = ToyTwoTask()
    weighting = GradNorm(["ctr", "l2r"], [model.shared.weight], lr=0.1)
    x, y = _toy_data(3, n=16)
    a, _ = model(x)
    before = weighting.weights()
    losses = {"ctr": ((a - y) ** 2).mean(), "l2r": torch.tensor(0.0)}
    weighting.before_backward(losses, {"ctr": 16, "l2r": 0})
    # Only one task present: it is its own mean, nothing to balance, the weights stay.
    assert weighting.weights() == pytest.approx(before)


def test_build_weighting_picks_the_configured_kind() -> None:
    param = nn.Parameter(torch.zeros(2, 2))
    assert isinstance(build_weighting(WeightingConfig(kind="fixed"), ["ctr"]), FixedWeighting)
    assert isinstance(build_weighting(WeightingConfig(kind="uncertainty"), ["ctr"]), UncertaintyWeighting)
    gn = build_weighting(WeightingConfig(kind="gradnorm", gradnorm_alpha=0.5), ["ctr", "ppp"], [param])
    assert isinstance(gn, GradNorm) and gn.alpha == 0.5
    with pytest.raises(ValueError, match="shared_params"):
        build_weighting(WeightingConfig(kind="gradnorm"), ["ctr"])
