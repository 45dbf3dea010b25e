"""Per-task losses on the group layout: each loss reads exactly its own examples, weighted means, stability."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from core.protocol import PPP_TEST_USER, PPP_VALID_USER
from core.tables import KIND_IDS
from tests.model.conftest import G, random_batch
from training.losses import LOSS_NAMES, ctcvr_nll, example_weights, row_counts, task_losses
from training.model import build_model
from training.spec import ModelSpec

Batch = dict[str, torch.Tensor]
ALL = LOSS_NAMES
IMP, FOLLOW, PPP = KIND_IDS["impressions"], KIND_IDS["follow"], KIND_IDS["ppp"]


def _outputs(n: int, g: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=gen)
            for name, shape in (("ctr_logit", (n, g)), ("cvr_logit", (n, g)), ("l2r_score", (n, g)),
                                ("follow_logit", (n,)), ("ppp_logits", (n, 7)))}


def _real(batch: Batch) -> torch.Tensor:
    """(B, G) bool: the slots that hold an item (``slot < n_items``)."""
    return torch.arange(G).unsqueeze(0) < batch["n_items"].unsqueeze(1)


def _values(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items()}


def test_a_task_without_rows_has_zero_loss_and_zero_gradient(make_spec: Callable[..., ModelSpec],
                                                             make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec())
    batch = make_batch(n=12, kinds=[IMP, FOLLOW] * 6)  # no PPP row
    losses = task_losses(model(batch), batch, ALL)
    assert row_counts(batch, ALL)["ppp"] == 0
    assert float(losses["ppp"].detach()) == 0.0 and losses["ppp"].requires_grad
    losses["ppp"].backward(retain_graph=True)
    for p in model.heads["ppp"].parameters():
        assert p.grad is not None and torch.all(p.grad == 0)
    for name in ("ctr", "ctcvr", "l2r", "follow"):
        value = float(losses[name].detach())
        assert value > 0 and math.isfinite(value), name


def _own_examples_batch() -> Batch:
    """A batch with every kind of example a loss must ignore: padding slots, rows of other kinds,
    sampled-out slots (ctr_weight 0, kept inside an L2R list), impression rows outside L2R lists and
    tier labels of held-out users."""
    batch = random_batch(n=30, seed=11)
    imp = batch["kind_id"] == IMP
    real = _real(batch)
    # sample out the second slot of every two-or-more-item list
    out = torch.zeros_like(real)
    out[:, 1] = True
    batch["ctr_weight"] = torch.where(out & real, torch.zeros_like(batch["ctr_weight"]), batch["ctr_weight"])
    ppp_rows = torch.nonzero(batch["kind_id"] == PPP).squeeze(1)
    batch["ppp_user"][ppp_rows[::3]] = PPP_VALID_USER
    batch["ppp_user"][ppp_rows[1::3]] = PPP_TEST_USER
    assert ((batch["ctr_weight"] == 0) & real).any() and (batch["l2r"][imp] == 0).any()
    assert (batch["ppp_user"] == 0).any() and (batch["ppp_user"] != 0).any()
    return batch


def _change(batch: Batch, outputs: dict[str, torch.Tensor], where: torch.Tensor,
            keys: tuple[str, ...]) -> tuple[Batch, dict[str, torch.Tensor]]:
    """Replace ``keys`` (labels and outputs) at ``where`` (a (B,) or (B, G) mask) by other values."""
    batch, outputs = dict(batch), dict(outputs)
    for key in keys:
        src = outputs if key in outputs else batch
        x = src[key]
        m = where if where.dim() == x.dim() else where.unsqueeze(-1).expand_as(x)
        if key in ("label_click", "label_buy", "label_follow"):
            new = 1.0 - x
        elif key == "label_tier":
            new = (x.clamp_min(0) + 3) % 7
        elif key in ("ctr_weight", "l2r_gain", "follow_weight"):
            new = x + 5.0
        else:
            new = x + 3.0
        src[key] = torch.where(m, new, x)
    return batch, outputs


SLOT_KEYS = ("label_click", "label_buy", "ctr_weight", "l2r_gain", "ctr_logit", "cvr_logit", "l2r_score")


def test_each_loss_uses_exactly_its_own_examples() -> None:
    batch = _own_examples_batch()
    outputs = _outputs(30)
    base = _values(task_losses(outputs, batch, ALL))
    assert all(math.isfinite(v) and v > 0 for v in base.values()), base
    real = _real(batch)
    kind = batch["kind_id"]

    def changed_losses(where: torch.Tensor, keys: tuple[str, ...]) -> dict[str, float]:
        b, o = _change(batch, outputs, where, keys)
        return _values(task_losses(o, b, ALL))

    # padding slots (of impression rows and of every other row) change nothing
    assert changed_losses(~real, SLOT_KEYS) == base
    # rows of other kinds: follow fields outside follow rows, tiers outside PPP rows
    assert changed_losses(kind != FOLLOW, ("label_follow", "follow_weight", "follow_logit")) == base
    assert changed_losses(kind != PPP, ("label_tier", "ppp_logits")) == base
    # tier labels of held-out users never train
    assert changed_losses(batch["ppp_user"] != 0, ("label_tier", "ppp_logits")) == base
    # sampled-out slots (ctr_weight 0) are not CTR examples, but still L2R ones inside an L2R list
    sampled_out = real & (batch["ctr_weight"] == 0)
    after = changed_losses(sampled_out, ("label_click", "label_buy", "ctr_logit", "cvr_logit", "l2r_score"))
    assert (after["ctr"], after["ctcvr"]) == (base["ctr"], base["ctcvr"])
    assert ((sampled_out & (batch["l2r"] == 1).unsqueeze(1)).any()) and after["l2r"] != base["l2r"]

    # and each loss does move with its own examples
    own = {"ctr": (real & (batch["ctr_weight"] > 0), ("label_click",)),
           "ctcvr": (real & (batch["ctr_weight"] > 0), ("label_buy",)),
           "follow": (kind == FOLLOW, ("label_follow",)),
           "ppp": ((kind == PPP) & (batch["ppp_user"] == 0), ("label_tier",))}
    for name, (where, keys) in own.items():
        assert changed_losses(where, keys)[name] != base[name], name


def test_the_l2r_loss_only_uses_l2r_lists() -> None:
    batch = _own_examples_batch()
    outputs = _outputs(30, seed=1)
    base = _values(task_losses(outputs, batch, ALL))
    real = _real(batch)
    not_l2r = real & (batch["l2r"] == 0).unsqueeze(1)
    b, o = _change(batch, outputs, not_l2r, ("label_click", "l2r_gain", "l2r_score"))
    after = _values(task_losses(o, b, ALL))
    assert after["l2r"] == base["l2r"]
    assert after["ctr"] != base["ctr"]  # the same clicks are CTR examples
    lists = real & (batch["l2r"] == 1).unsqueeze(1)
    assert int((example_weights(batch, "l2r") > 0).sum()) == int(lists.sum()) == row_counts(batch, ["l2r"])["l2r"]
    b, o = _change(batch, outputs, lists, ("l2r_score",))
    assert _values(task_losses(o, b, ["l2r"]))["l2r"] != base["l2r"]


def test_losses_are_weighted_means_over_their_examples() -> None:
    g = 2
    batch = {
        "kind_id": torch.tensor([IMP, IMP, FOLLOW, PPP, PPP]),
        "n_items": torch.tensor([2, 1, 0, 0, 0]),
        "label_click": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0, 0], [0, 0], [0, 0]]),
        "label_buy": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0, 0], [0, 0], [0, 0]]),
        "ctr_weight": torch.tensor([[1.0, 3.0], [2.0, 9.0], [0, 0], [0, 0], [0, 0]]),  # 9.0: a padding slot
        "l2r": torch.tensor([1, 0, 0, 0, 0]),
        "l2r_gain": torch.tensor([[4.0, 1.0], [1.0, 0.0], [0, 0], [0, 0], [0, 0]]),
        "label_follow": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]),
        "follow_weight": torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0]),
        "label_tier": torch.tensor([-1, -1, -1, 2, 5]),
        "ppp_user": torch.tensor([0, 0, 0, 0, PPP_TEST_USER]),
    }
    ppp_logits = torch.zeros(5, 7)
    ppp_logits[4, 0] = 9.0  # the held-out row would not cost log 7
    outputs = {"ctr_logit": torch.tensor([[0.0, 2.0], [1.0, 7.0], [9, 9], [9, 9], [9, 9]]),
               "cvr_logit": torch.zeros(5, g),
               "l2r_score": torch.tensor([[1.0, 2.0], [5.0, 5.0], [5, 5], [5, 5], [5, 5]]),
               "follow_logit": torch.tensor([3.0, 3.0, 0.5, 3.0, 3.0]),
               "ppp_logits": ppp_logits}
    losses = task_losses(outputs, batch, ALL)

    def sp(x: float) -> float:
        return math.log1p(math.exp(x))

    ctr = (1 * sp(0.0) + 3 * sp(2.0) + 2 * sp(1.0)) / (1 + 3 + 2)   # BCE(y=1) = softplus(-x), BCE(y=0) = softplus(x)
    l2r = (4 * sp(-1.0) + 1 * sp(2.0)) / 2                          # Σ gain · loss / examples
    assert float(losses["ctr"]) == pytest.approx(ctr, rel=1e-6)
    assert float(losses["l2r"]) == pytest.approx(l2r, rel=1e-6)
    assert float(losses["follow"]) == pytest.approx(sp(-0.5), rel=1e-6)
    assert float(losses["ppp"]) == pytest.approx(math.log(7), rel=1e-6)
    # ESMM: p(buy) = sigmoid(ctr) · 1/2 on the same slots and weights
    p = torch.sigmoid(torch.tensor([0.0, 2.0, 1.0])) * 0.5
    y = torch.tensor([1.0, 0.0, 0.0])
    ctcvr = float((F.binary_cross_entropy(p, y, reduction="none") * torch.tensor([1.0, 3.0, 2.0])).sum() / 6)
    assert float(losses["ctcvr"]) == pytest.approx(ctcvr, rel=1e-6)
    assert row_counts(batch, ALL) == {"ctr": 3, "ctcvr": 3, "l2r": 2, "follow": 1, "ppp": 1}


def test_unknown_loss_names_are_refused() -> None:
    batch = random_batch(n=6)
    with pytest.raises(KeyError, match="unknown loss 'clicks'"):
        task_losses(_outputs(6), batch, ["clicks"])
    with pytest.raises(KeyError, match="model.esmm"):
        task_losses({k: v for k, v in _outputs(6).items() if k != "cvr_logit"}, batch, ["ctcvr"])


def test_ctcvr_loss_is_the_bce_of_the_product_and_stays_finite() -> None:
    ctr, cvr = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([-0.5, 0.7, 1.5])
    y = torch.tensor([1.0, 0.0, 1.0])
    p = torch.sigmoid(ctr) * torch.sigmoid(cvr)
    torch.testing.assert_close(ctcvr_nll(ctr, cvr, y), F.binary_cross_entropy(p, y, reduction="none"))
    big = torch.tensor([60.0, -60.0, 60.0], requires_grad=True)
    loss = ctcvr_nll(big, big, torch.tensor([0.0, 1.0, 1.0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and big.grad is not None and torch.isfinite(big.grad).all()


def test_non_finite_outputs_of_masked_examples_do_not_leak_in() -> None:
    """A NaN logit where a loss has no example (padding, another kind) must not make the loss NaN."""
    batch = random_batch(n=9, seed=3)
    outputs = _outputs(9)
    real = _real(batch)
    nan = float("nan")
    for key in ("ctr_logit", "cvr_logit", "l2r_score"):
        outputs[key] = torch.where(real, outputs[key], torch.full_like(outputs[key], nan))
    outputs["follow_logit"] = torch.where(batch["kind_id"] == FOLLOW, outputs["follow_logit"], nan)
    outputs["ppp_logits"] = torch.where((batch["kind_id"] == PPP).unsqueeze(1), outputs["ppp_logits"], nan)
    assert all(math.isfinite(v) for v in _values(task_losses(outputs, batch, ALL)).values())
