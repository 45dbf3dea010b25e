"""Per-task losses of a mixed-task batch, masked by ``task_id``.

Every row belongs to one task (``core.tables.TASK_IDS``). Each loss is the
``sample_weight``-weighted mean over its own rows; it is exactly 0 (still attached to the
graph, so distributed training sees every parameter used) when the batch has none.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from core.tables import TASK_IDS

logger = logging.getLogger(__name__)

LOSS_NAMES = ("ctr", "ctcvr", "l2r", "follow", "ppp")
# Loss name -> the task whose rows it is computed on.
LOSS_TASK = {"ctr": "ctr", "ctcvr": "ctr", "l2r": "l2r", "follow": "follow", "ppp": "ppp"}
_EPS = 1e-12


def _masked_mean(values: Tensor, rows: Tensor, sample_weight: Tensor) -> Tensor:
    """Σ w·v over rows / Σ w over rows; 0 with a graph when no row has weight."""
    w = sample_weight.to(values.dtype) * rows.to(values.dtype)
    # torch.where rather than a product so a non-finite value on a masked row cannot reach the loss.
    total = torch.where(rows, values * w, torch.zeros_like(values)).sum()
    return total / w.sum().clamp_min(_EPS)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def ctcvr_nll(ctr_logit: Tensor, cvr_logit: Tensor, label_buy: Tensor) -> Tensor:
    """Per-row binary cross-entropy of p_ctcvr = sigmoid(ctr) * sigmoid(cvr) against label_buy, (B,).

    Computed in log space (log p = logsigmoid(ctr) + logsigmoid(cvr)) so it stays finite
    when p approaches 0 or 1.
    """
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    return -(label_buy * log_p + (1.0 - label_buy) * _log1mexp(log_p))


def loss_rows(batch: Mapping[str, Tensor], loss_name: str) -> Tensor:
    """(B,) bool: the rows a loss is computed on (its task's rows; PPP rows need a tier label)."""
    if loss_name not in LOSS_TASK:
        raise KeyError(f"unknown loss '{loss_name}'; known: {list(LOSS_NAMES)}")
    rows = batch["task_id"] == TASK_IDS[LOSS_TASK[loss_name]]
    if loss_name == "ppp":
        rows = rows & (batch["label_tier"] >= 0)
    return rows


def row_counts(batch: Mapping[str, Tensor], loss_names: Iterable[str]) -> dict[str, int]:
    """Number of rows each loss is computed on in this batch."""
    return {name: int(loss_rows(batch, name).sum()) for name in loss_names}


def task_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                tasks: Iterable[str]) -> dict[str, Tensor]:
    """Scalar loss per loss name.

    Args:
        outputs: :meth:`training.model.DUPNModel.forward` outputs.
        batch: the batch (``task_id``, labels, ``l2r_weight``, ``sample_weight``; all (B,)).
        tasks: loss names to compute (``ModelSpec.loss_names``): ``ctr`` (BCE on
            label_click), ``ctcvr`` (ESMM: BCE of p_ctcvr on label_buy over CTR rows),
            ``l2r`` (logistic loss of the score with y = ±1 from label_click, weighted by
            l2r_weight), ``follow`` (BCE on label_follow), ``ppp`` (cross-entropy on
            label_tier, rows with tier -1 ignored).

    Returns:
        loss name -> scalar tensor (0 with a graph when the batch has no row of it).
    """
    sw = batch["sample_weight"].float()
    out: dict[str, Tensor] = {}
    for name in tasks:
        rows = loss_rows(batch, name)
        if name == "ctr":
            per_row = F.binary_cross_entropy_with_logits(outputs["ctr_logit"], batch["label_click"].float(),
                                                         reduction="none")
        elif name == "ctcvr":
            if "cvr_logit" not in outputs:
                raise KeyError("the ctcvr loss needs the ESMM head; build the model with model.esmm = true")
            per_row = ctcvr_nll(outputs["ctr_logit"], outputs["cvr_logit"], batch["label_buy"].float())
        elif name == "l2r":
            y = 2.0 * batch["label_click"].float() - 1.0
            per_row = batch["l2r_weight"].float() * F.softplus(-y * outputs["l2r_score"])
        elif name == "follow":
            per_row = F.binary_cross_entropy_with_logits(outputs["follow_logit"], batch["label_follow"].float(),
                                                         reduction="none")
        elif name == "ppp":
            tier = torch.where(rows, batch["label_tier"].long(), torch.full_like(batch["label_tier"].long(), -1))
            per_row = F.cross_entropy(outputs["ppp_logits"], tier, ignore_index=-1, reduction="none")
        else:
            raise KeyError(f"unknown loss '{name}'; known: {list(LOSS_NAMES)}")
        out[name] = _masked_mean(per_row, rows, sw)
    return out
