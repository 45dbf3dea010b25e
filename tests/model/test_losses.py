"""Per-task losses: masking by task_id, weighting by sample_weight, stability."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from training.losses import ctcvr_nll, row_counts, task_losses
from training.model import build_model
from training.spec import ModelSpec

Batch = dict[str, torch.Tensor]
ALL = ("ctr", "ctcvr", "l2r", "follow", "ppp")


def _outputs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=g)
            for name, shape in (("ctr_logit", (n,)), ("cvr_logit", (n,)), ("l2r_score", (n,)),
                                ("follow_logit", (n,)), ("ppp_logits", (n, 7)))}


def test_a_task_without_rows_has_zero_loss_and_zero_gradient(make_spec: Callable[..., ModelSpec],
                                                             make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec())
    batch = make_batch(n=12, task_ids=[0, 1, 2] * 4)  # no PPP row
    losses = task_losses(model(batch), batch, ALL)
    assert row_counts(batch, ALL)["ppp"] == 0
    assert float(losses["ppp"].detach()) == 0.0 and losses["ppp"].requires_grad
    losses["ppp"].backward(retain_graph=True)
    for p in model.heads["ppp"].parameters():
        assert p.grad is not None and torch.all(p.grad == 0)
    for name in ("ctr", "ctcvr", "l2r", "follow"):
        value = float(losses[name].detach())
        assert value > 0 and math.isfinite(value)


def test_other_tasks_labels_do_not_change_a_loss(make_batch: Callable[..., Batch]) -> None:
    batch = make_batch(n=16, seed=1)
    outputs = _outputs(16)
    base = task_losses(outputs, batch, ALL)
    not_ctr = batch["task_id"] != 0
    changed = dict(batch)
    changed["label_click"] = torch.where(not_ctr, 1 - batch["label_click"], batch["label_click"])
    changed["label_buy"] = torch.where(not_ctr, 1 - batch["label_buy"], batch["label_buy"])
    changed["sample_weight"] = torch.where(not_ctr, torch.full_like(batch["sample_weight"], 7.0),
                                           batch["sample_weight"])
    after = task_losses(outputs, changed, ALL)
    assert float(after["ctr"]) == float(base["ctr"])
    assert float(after["ctcvr"]) == float(base["ctcvr"])
    assert float(after["l2r"]) != float(base["l2r"])  # the l2r rows' labels did change
    ppp_rows = batch["task_id"] == 3
    changed_tier = dict(batch)
    changed_tier["label_tier"] = torch.where(ppp_rows, batch["label_tier"], torch.full_like(batch["label_tier"], 5))
    assert float(task_losses(outputs, changed_tier, ["ppp"])["ppp"]) == float(base["ppp"])


def test_losses_are_sample_weighted_means_over_their_rows() -> None:
    batch = {
        "task_id": torch.tensor([0, 0, 1, 1, 3, 3]),
        "label_click": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
        "label_buy": torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        "label_follow": torch.zeros(6),
        "label_tier": torch.tensor([-1, -1, -1, -1, 2, -1]),
        "l2r_weight": torch.tensor([1.0, 1.0, 4.0, 1.0, 1.0, 1.0]),
        "sample_weight": torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0, 1.0]),
    }
    outputs = {"ctr_logit": torch.tensor([0.0, 2.0, 9.0, 9.0, 9.0, 9.0]),
               "l2r_score": torch.tensor([5.0, 5.0, 1.0, 2.0, 5.0, 5.0]),
               "ppp_logits": torch.zeros(6, 7)}
    losses = task_losses(outputs, batch, ["ctr", "l2r", "ppp"])
    ctr = (math.log(2) + 3 * math.log(1 + math.exp(2))) / 4
    l2r = (4 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert float(losses["ctr"]) == pytest.approx(ctr, rel=1e-6)
    assert float(losses["l2r"]) == pytest.approx(l2r, rel=1e-6)
    assert float(losses["ppp"]) == pytest.approx(math.log(7), rel=1e-6)  # the tier -1 PPP row is ignored
    assert row_counts(batch, ["ctr", "ppp", "follow"]) == {"ctr": 2, "ppp": 1, "follow": 0}


def test_ctcvr_loss_is_the_bce_of_the_product_and_stays_finite() -> None:
    ctr, cvr = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([-0.5, 0.7, 1.5])
    y = torch.tensor([1.0, 0.0, 1.0])
    p = torch.sigmoid(ctr) * torch.sigmoid(cvr)
    torch.testing.assert_close(ctcvr_nll(ctr, cvr, y), F.binary_cross_entropy(p, y, reduction="none"))
    big = torch.tensor([60.0, -60.0, 60.0], requires_grad=True)
    loss = ctcvr_nll(big, big, torch.tensor([0.0, 1.0, 1.0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and big.grad is not None and torch.isfinite(big.grad).all()
