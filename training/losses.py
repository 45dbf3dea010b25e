"""Per-task losses of a batch of example groups (``features/training_examples`` rows).

A batch mixes row kinds (impression lists, follow impressions, tier labels); every loss is
computed on its own examples only:

* ``ctr`` — binary cross-entropy of every impression slot against ``label_click``, weighted by
  the slot's ``ctr_weight`` (its sampling weight; 0 for padding);
* ``ctcvr`` — ESMM: cross-entropy of p(click) · p(buy | click) against ``label_buy`` on the same
  slots and weights;
* ``l2r`` — the logistic loss of the score with y = ±1 from ``label_click``, weighted by the
  slot's graded gain ``l2r_gain``, over the slots of L2R lists (``l2r = 1``);
* ``follow`` — binary cross-entropy on follow rows, weighted by ``follow_weight``;
* ``ppp`` — cross-entropy on the tier labels of **training users** (``ppp_user = 0``): labels of
  the held-out users never train a model, whatever split their rows are in.

A model whose scoring heads read the tower's outputs with their gradient stopped
(``model.side_detached``) also gives the outputs of the heads that train the tower, prefixed with
:data:`TOWER_OUTPUTS`. A task's loss then has the value of those heads' loss (what the task weighting
sees and the logs report) and the gradient of both: each set of heads learns from its own loss, and
the tower learns exactly what it would learn without the scoring heads.

Each loss is a weighted mean over its examples in the batch; it is exactly 0 (still attached to
the graph, so distributed training sees every parameter used) when the batch has none.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from core.protocol import PPP_TRAIN_USER
from core.tables import KIND_IDS

logger = logging.getLogger(__name__)

LOSS_NAMES = ("ctr", "ctcvr", "l2r", "follow", "ppp")
# Loss name -> the task whose examples it is computed on.
LOSS_TASK = {"ctr": "ctr", "ctcvr": "ctr", "l2r": "l2r", "follow": "follow", "ppp": "ppp"}
_EPS = 1e-12
# prefix of the outputs of the heads that train the tower when the scoring heads' gradient is stopped
TOWER_OUTPUTS = "tower_"


def slot_mask(batch: Mapping[str, Tensor]) -> Tensor:
    """(B, G) bool: the real impression slots of each row (``slot < n_items``)."""
    g = batch["label_click"].shape[1]
    return torch.arange(g, device=batch["n_items"].device).unsqueeze(0) < batch["n_items"].unsqueeze(1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def ctcvr_nll(ctr_logit: Tensor, cvr_logit: Tensor, label_buy: Tensor) -> Tensor:
    """Element-wise binary cross-entropy of p_ctcvr = sigmoid(ctr) * sigmoid(cvr) against label_buy.

    Computed in log space (log p = logsigmoid(ctr) + logsigmoid(cvr)) so it stays finite
    when p approaches 0 or 1.
    """
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    return -(label_buy * log_p + (1.0 - label_buy) * _log1mexp(log_p))


def example_weights(batch: Mapping[str, Tensor], loss_name: str) -> Tensor:
    """The training weight of each example of a loss: (B, G) for the slot losses, (B,) otherwise;
    0 where an example does not belong to the loss."""
    if loss_name not in LOSS_TASK:
        raise KeyError(f"unknown loss '{loss_name}'; known: {list(LOSS_NAMES)}")
    if loss_name in ("ctr", "ctcvr"):
        return batch["ctr_weight"].float() * slot_mask(batch)
    if loss_name == "l2r":
        return (slot_mask(batch) & (batch["l2r"] == 1).unsqueeze(1)).float()
    kind = batch["kind_id"]
    if loss_name == "follow":
        return batch["follow_weight"].float() * (kind == KIND_IDS["follow"])
    rows = (kind == KIND_IDS["ppp"]) & (batch["label_tier"] >= 0) & (batch["ppp_user"] == PPP_TRAIN_USER)
    return rows.float()


def row_counts(batch: Mapping[str, Tensor], loss_names: Iterable[str]) -> dict[str, int]:
    """Number of examples each loss is computed on in this batch."""
    return {name: int((example_weights(batch, name) > 0).sum()) for name in loss_names}


def weighted_mean(values: Tensor, weights: Tensor, norm: Tensor | None = None) -> Tensor:
    """Σ w·v / Σ norm (norm defaults to w); masked entries (w = 0) cannot bring a NaN in."""
    total = torch.where(weights > 0, values * weights, torch.zeros_like(values)).sum()
    return total / (weights if norm is None else norm).sum().clamp_min(_EPS)


def task_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                tasks: Iterable[str]) -> dict[str, Tensor]:
    """Scalar loss per loss name (see the module docstring).

    Args:
        outputs: a :class:`training.model.TaskModel`'s outputs.
        batch: the batch (``features/training_examples`` columns).
        tasks: loss names to compute (``ModelSpec.loss_names``).

    Returns:
        loss name -> scalar tensor (0 with a graph when the batch has no example of it).
    """
    tasks = list(tasks)
    out = output_losses(outputs, batch, tasks)
    trained = {k[len(TOWER_OUTPUTS):]: v for k, v in outputs.items() if k.startswith(TOWER_OUTPUTS)}
    if trained:
        tower = output_losses(trained, batch, [t for t in tasks if t != "ppp"])
        for name, value in tower.items():
            # the tower heads' value, and the gradient of both losses (each reaches its own heads only)
            out[name] = value + (out[name] - out[name].detach())
    return out


def output_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                  tasks: Iterable[str]) -> dict[str, Tensor]:
    """Scalar loss per loss name of one set of outputs (``ctr_logit``, ``cvr_logit``, ``l2r_score``,
    ``follow_logit``, ``ppp_logits``)."""
    out: dict[str, Tensor] = {}
    for name in tasks:
        w = example_weights(batch, name)
        if name == "ctr":
            values = F.binary_cross_entropy_with_logits(outputs["ctr_logit"], batch["label_click"].float(),
                                                        reduction="none")
            out[name] = weighted_mean(values, w)
        elif name == "ctcvr":
            if "cvr_logit" not in outputs:
                raise KeyError("the ctcvr loss needs the ESMM head; build the model with model.esmm = true")
            out[name] = weighted_mean(ctcvr_nll(outputs["ctr_logit"], outputs["cvr_logit"],
                                                batch["label_buy"].float()), w)
        elif name == "l2r":
            y = 2.0 * batch["label_click"].float() - 1.0
            values = F.softplus(-y * outputs["l2r_score"])
            out[name] = weighted_mean(values, w * batch["l2r_gain"].float(), norm=w)
        elif name == "follow":
            values = F.binary_cross_entropy_with_logits(outputs["follow_logit"], batch["label_follow"].float(),
                                                        reduction="none")
            out[name] = weighted_mean(values, w)
        elif name == "ppp":
            tier = torch.where(w > 0, batch["label_tier"].long(), torch.full_like(batch["label_tier"].long(), -1))
            values = F.cross_entropy(outputs["ppp_logits"], tier, ignore_index=-1, reduction="none")
            out[name] = weighted_mean(values, w)
        else:
            raise KeyError(f"unknown loss '{name}'; known: {list(LOSS_NAMES)}")
    return out
