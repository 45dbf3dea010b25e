"""Downstream transfer of the universal user representation: the shop-preference task four ways.

The DUPN paper's transfer experiment, on ``raw/shop_prefs`` (a task never used to train the
shared representation). The data side (``features/transfer_examples``, its user-hash split into
train / valid / test, the original training days RA retrains on) is :mod:`features.transfer`;
this module holds the models, the batches, the training loop and the report:

* ``rt`` representation transfer: a shallow model (:class:`ShopHead`, one hidden layer) over
  the **published** vector of ``outputs/user_representations`` and the shop features (fresh
  hashed shop-id and shop-category embeddings, the shop's prices and size from ``raw/items``)
  and the match features the vector holds (:class:`RepresentationTransfer`); the user network is
  not touched (what a downstream team can do with the table).
* ``ft`` fine-tuning: the user tower of the registered model version that published the
  snapshot's vectors (or a chosen version) with a new :class:`ShopHead` whose shop and category
  embeddings are the tower's own (pre-trained) tables; all trained end to end (the tower at
  ``transfer.ft_tower_lr_scale`` times the learning rate).
* ``rs`` single task from scratch: the same architecture as ``ft``, freshly initialised.
* ``ra`` all tasks retrained: a fresh :class:`training.model.DUPNModel` (that version's spec)
  plus the shop head, trained jointly on the original tasks' example groups and the shop rows
  mixed into every batch (:func:`merge_batches`; each loss selects its own rows). Its budget is
  ``ra_mix`` original rows per shop row and step, for the same number of epochs as FT and RS.

Every shop head reads the part of the representation ``transfer.head_input`` names (:func:`head_reads`)
beside the shop and match features.

The protocol (:func:`fit`): every method trains up to ``epochs`` epochs (RT ``rt_epochs``, at its own
``rt_lr``; fewer with ``transfer.patience``: early stopping on validation), is scored on the
**validation** split after each, keeps the weights of its best validation epoch, and the **test**
split is scored once, with those weights. Every method reads exactly the same rows of each split
(checked by row fingerprints).

Shapes: B = batch size, L = max_len, R = representation dim, Ds = shop embedding dim,
G = training_set.group_size (impression slots of an original row).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import tables as t
from core.config import HeadInput, TrainingConfig, WeightingConfig
from core.errors import DataQualityError, PlatformError
from features.transfer import FINGERPRINT_MOD, SHOP_DENSE, SHOP_FIELDS, SPLITS, OriginalData, TransferFiles
from training import evaluation
from training.data import SIDE_FIELDS, TRAIN_FIELDS, USER_FIELDS, Batch, PetastormSource
from training.model import (
    DUPNModel, TaskModel, UserTower, build_model, interest_layout, last_shared_layer, price_gaps)
from training.modules import RelativePrice, embedding, interest_match, match_scores, mlp, required_match
from training.spec import ModelSpec
from training.step import TrainTask, prepare_torch
from training.weighting import TaskWeighting, build_weighting

logger = logging.getLogger(__name__)

METHODS = ("rt", "ft", "rs", "ra")
METHOD_NAMES = {"rt": "representation transfer", "ft": "fine-tuning", "rs": "single task from scratch",
                "ra": "all tasks retrained"}
DEFAULT_DAYS = 2
DEFAULT_RA_MIX = 4
# kind_id of shop rows mixed into RA's batches of example groups (after core.tables.KINDS)
SHOP_KIND = len(t.KINDS)

RT_FIELDS = ("example_id", "embedding", *SHOP_FIELDS, "label")
NET_FIELDS = ("example_id", *USER_FIELDS, *SHOP_FIELDS, "label")


# ---------------------------------------------------------------------- models
class ShopHead(nn.Module):
    """Shop preference: MLP(r ‖ s ‖ (P·r) ⊙ s ‖ match) -> logit (B,), where r = the first ``reads``
    columns of the representation (``transfer.head_input``: all of it, its dense part, or none, when
    r and the product term drop out), s = shop embedding ‖ shop-category embedding ‖ shop_dense (the
    shop features) and ``match`` the user-shop match features (:func:`tower_match`: what
    :class:`training.model.FollowHead` reads for the shop's category, and with ``transfer.price_match``
    the shop's price gaps), when the caller gives them.

    One hidden layer; the product term hands the MLP the user-shop match directly (as
    :class:`training.model.ItemHead` does for items).

    Args:
        rep_dim: R.
        shop: the shop embedding table (Ds wide); shared with a user tower or fresh.
        category: the category embedding table (Dc wide); shared with a user tower or fresh.
        hidden: hidden width.
        dropout: dropout after the hidden layer.
        match_dim: width of the match features (0 = none).
        reads: leading columns of the representation the MLP reads (:func:`head_reads`; None = all R).
    """

    def __init__(self, rep_dim: int, shop: nn.Embedding, category: nn.Embedding, hidden: int,
                 dropout: float, match_dim: int = 0, reads: int | None = None) -> None:
        super().__init__()
        self.shop = shop
        self.category = category
        self.match_dim = match_dim
        self.reads = rep_dim if reads is None else reads
        if not 0 <= self.reads <= rep_dim:
            raise ValueError(f"the shop head reads {self.reads} columns of a {rep_dim}-column representation")
        d = shop.embedding_dim + category.embedding_dim + len(SHOP_DENSE)
        self.interact = nn.Linear(self.reads, d) if self.reads else None
        self.mlp = mlp((self.reads + d if self.reads else 0) + d + match_dim, [hidden], 1, dropout)

    def forward(self, representation: Tensor, batch: Mapping[str, Tensor], match: Tensor | None = None) -> Tensor:
        """representation (B, R) float; batch ``shop`` (B,), ``shop_category`` (B,) int64,
        ``shop_dense`` (B, len(SHOP_DENSE)) float; match (B, M) -> logit (B,)."""
        s = torch.cat([self.shop(batch["shop"]), self.category(batch["shop_category"]),
                       batch["shop_dense"].float()], dim=-1)
        parts = [s]
        if self.interact is not None:
            r = representation[:, :self.reads]
            parts = [r, s, self.interact(r) * s]
        if self.match_dim:
            parts.append(required_match(match, "(B, M)"))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


HEAD_INPUTS: tuple[str, ...] = get_args(HeadInput)


def head_reads(head_input: str, rep_dim: int, dense_dim: int, match_dim: int) -> int:
    """Leading columns of an R-column representation the shop head's MLP reads for ``transfer.head_input``:
    ``full`` R, ``dense`` the dense part (``dense_dim``), ``match`` 0 (the match features stand for the user).

    Raises:
        PlatformError: an unknown value, or ``dense`` / ``match`` without match features (the vector's
            layout is not a DUPN one with interests, so its parts are not known).
    """
    if head_input not in HEAD_INPUTS:
        raise PlatformError(f"transfer.head_input is {head_input!r}; use one of {', '.join(HEAD_INPUTS)}")
    if head_input == "full":
        return rep_dim
    if not match_dim:
        raise PlatformError(f"transfer.head_input={head_input} reads part of a DUPN representation with interests "
                            f"and match features; this base model's vectors have none (another family, "
                            f"model.match_features off, or vectors of another spec): set transfer.head_input=full")
    return dense_dim if head_input == "dense" else 0


def tower_match(tower: nn.Module, representation: Tensor, category: Tensor,
                log_price: Tensor | None = None) -> Tensor | None:
    """The match features (B, :func:`match_width`) of a user tower with interests (DUPN's), else None:
    what :class:`training.model.FollowHead` reads for a talent's category (every interest's category
    cosine, the time-decay pools' cosines times their decayed counts, and with the category profile each
    pool's decayed count in the shop's category and its share), then, with the shops' log prices
    (``transfer.price_match``) and a tower with behaviour-type prices, the shop's normalised relative
    price minus the user's mean of each behaviour type and its absolute value
    (:meth:`training.model.UserTower.price_gaps`, the item heads' price match)."""
    if not hasattr(tower, "match"):
        return None
    interests = cast(UserTower, tower)
    match = interests.match(representation, category.unsqueeze(1))[:, 0]
    if log_price is None or not interests.behaviour_prices:
        return match
    gap, size = interests.price_gaps(representation, category.unsqueeze(1), log_price.unsqueeze(1))
    return torch.cat([match, gap[:, 0], size[:, 0]], dim=-1)


def match_width(tower: nn.Module, price_match: bool = False) -> int:
    """Width of :func:`tower_match`'s features for ``tower`` (0 without interests)."""
    if not hasattr(tower, "match"):
        return 0
    prices = 2 * int(getattr(tower, "behaviour_prices", 0)) if price_match else 0
    return int(getattr(tower, "category_match_dim", 0)) + prices


def shop_prices(batch: Mapping[str, Tensor], price_match: bool) -> Tensor | None:
    """The shops' mean log prices (B,) when the head matches prices, else None."""
    return batch["shop_log_price"].float() if price_match else None


class ShopScorer(nn.Module):
    """A model that scores shop-preference rows: ``shop_logit(batch) -> (B,)``."""

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError


def _user_batch(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in USER_FIELDS}


class RepresentationTransfer(ShopScorer):
    """RT: :class:`ShopHead` over the published vector ``embedding`` (B, R) and fresh shop and
    category embeddings.

    When the publishing model is DUPN with interests, the published vector's layout is known from its
    spec (read off a :class:`training.model.UserTower` of that spec, as
    :func:`training.layout.published_layout` does): the head then also gets the features the base
    model's follow head reads for a category (:func:`tower_match`), from the vector alone: the
    similarity of each interest with a fresh, learned direction per shop category (which a downstream
    team learns from its own labels) where the tower uses its category embedding, each time-decay
    pool's similarity times its decayed count, and, with the category profile, each pool's decayed
    count in the shop's category and that count's share of the pool's (no parameter: read by index).
    With ``price_match`` (and behaviour-type prices in the vector), also the shop's price gaps to the
    user's behaviour types, as :func:`tower_match` gives them: the relative price uses the base model's
    frozen reference prices and normalisation, which come with its spec (no parameter either).
    """

    interest_cols: Tensor
    activity_cols: Tensor
    profile_cols: Tensor
    price_cols: Tensor

    def __init__(self, rep_dim: int, spec: ModelSpec, price_match: bool = False, head_input: str = "full") -> None:
        super().__init__()
        m = spec.model
        self.dense_dim, heads, self.interest_dim = interest_layout(m)
        self.cat_dim = m.category_dim
        tower = UserTower(spec) if (m.family == "dupn" and m.match_features) else None
        if tower is not None and tower.out_dim != rep_dim:
            tower = None  # not this spec's vectors: treat them as opaque
        self.heads = heads if tower is not None else 0
        self.attention_heads = tower.heads if tower is not None else 0
        match_dim = 0
        index = torch.arange(rep_dim, dtype=torch.float64).unsqueeze(0)  # each column holds its own index
        cols = {"interest_cols": torch.zeros(0, self.cat_dim), "activity_cols": torch.zeros(0),
                "profile_cols": torch.zeros(0, 0), "price_cols": torch.zeros(0)}
        self.prices: RelativePrice | None = None
        if tower is not None:
            match_dim = match_width(tower, price_match)
            cols = {"interest_cols": tower.interests(index)[0, :, :self.cat_dim],
                    "activity_cols": tower.activity(index)[0], "profile_cols": tower.category_profile(index)[0],
                    "price_cols": tower.price_features(index)[0, :2 * tower.behaviour_prices]}
            if price_match and tower.behaviour_prices:
                # the spec's frozen reference prices and normalisation (buffers only, no embedding table)
                self.prices = RelativePrice(tower.items)
        for name, value in cols.items():
            self.register_buffer(name, value.long(), persistent=False)
        self.head = ShopHead(rep_dim, embedding(spec.vocab["shop"], m.shop_dim),
                             embedding(spec.vocab["category"], m.category_dim), m.head_hidden, m.dropout,
                             match_dim, head_reads(head_input, rep_dim, self.dense_dim, match_dim))

    def match(self, rep: Tensor, category: Tensor, log_price: Tensor | None = None) -> Tensor:
        """The match features (B, :func:`match_width`) of published vectors rep (B, R), shop categories (B,)
        (and the shops' log prices (B,), with ``price_match``), in :func:`tower_match`'s order."""
        target = category.unsqueeze(1)  # one target per row: (B, 1)
        scores = match_scores(rep[:, self.interest_cols], self.head.category(target), self.cat_dim)  # (B, 1, K + P)
        mass = rep[:, self.activity_cols] if len(self.activity_cols) else None
        profile = rep[:, self.profile_cols] if self.profile_cols.shape[-1] else None
        out = interest_match(scores, self.attention_heads, self.heads, mass, profile, target)
        if self.prices is not None and log_price is not None:
            prices = log_price.unsqueeze(1)
            out = torch.cat([out, *price_gaps(rep[:, self.price_cols], self.prices(prices, target), prices)], dim=-1)
        return out[:, 0]

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: ``embedding`` (B, R) and the shop fields -> logit (B,)."""
        rep = batch["embedding"].float()
        match = self.match(rep, batch["shop_category"], shop_prices(batch, self.prices is not None)) \
            if self.heads else None
        return self.head(rep, batch, match)


def tower_tables(tower: nn.Module) -> tuple[int, nn.Embedding, nn.Embedding]:
    """(R, shop table, category table) of a user tower (:class:`training.model.UserTower`, or any
    encoder with ``out_dim`` and the item embedding ``items.shop`` / ``items.category``).

    Raises:
        PlatformError: the tower has no such attributes.
    """
    items = getattr(tower, "items", None)
    shop, category, out_dim = getattr(items, "shop", None), getattr(items, "category", None), \
        getattr(tower, "out_dim", None)
    if not (isinstance(shop, nn.Embedding) and isinstance(category, nn.Embedding) and isinstance(out_dim, int)):
        raise PlatformError(f"the user tower {type(tower).__name__} has no out_dim or no items.shop / items.category "
                            f"embedding tables; the shop head of FT, RS and RA needs a DUPN user tower")
    return out_dim, shop, category


def shop_head(tower: nn.Module, hidden: int, dropout: float, price_match: bool, head_input: str) -> ShopHead:
    """A :class:`ShopHead` on ``tower``'s representation, sharing its shop and category tables."""
    rep_dim, shop, category = tower_tables(tower)
    match_dim = match_width(tower, price_match)
    reads = head_reads(head_input, rep_dim, int(getattr(tower, "dense_dim", rep_dim)), match_dim)
    return ShopHead(rep_dim, shop, category, hidden, dropout, match_dim, reads)


class ShopPreferenceNet(ShopScorer):
    """FT / RS: a DUPN user tower -> representation (B, R) -> :class:`ShopHead` (sharing the tower's shop and
    category tables)."""

    def __init__(self, tower: nn.Module, hidden: int, dropout: float, price_match: bool = False,
                 head_input: str = "full") -> None:
        super().__init__()
        self.tower = tower
        self.price_match = price_match
        self.head = shop_head(tower, hidden, dropout, price_match, head_input)

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: user-side keys (``USER_FIELDS``) and the shop fields -> logit (B,)."""
        rep = self.tower(_user_batch(batch))["representation"]
        return self.head(rep, batch, tower_match(self.tower, rep, batch["shop_category"],
                                                 shop_prices(batch, self.price_match)))


class JointShopDUPN(ShopScorer):
    """RA: a DUPN model with one more head, :class:`ShopHead` on the shared representation."""

    def __init__(self, dupn: DUPNModel, hidden: int, dropout: float, price_match: bool = False,
                 head_input: str = "full") -> None:
        super().__init__()
        self.dupn = dupn
        self.price_match = price_match
        self.head = shop_head(dupn.tower, hidden, dropout, price_match, head_input)

    def _shop(self, rep: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(rep, batch, tower_match(self.dupn.tower, rep, batch["shop_category"],
                                                 shop_prices(batch, self.price_match)))

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A mixed batch (:func:`merge_batches`) -> every DUPN output plus ``shop_logit`` (B,)."""
        out = self.dupn(batch)
        out["shop_logit"] = self._shop(out["representation"], batch)
        return out

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self._shop(self.dupn.tower(_user_batch(batch))["representation"], batch)


# ---------------------------------------------------------------------- batches
class BatchSource(Protocol):
    """Anything with ``batches(epoch)``: :class:`training.data.PetastormSource`, ``TensorBatches``."""

    def batches(self, epoch: int = 0) -> Iterator[Batch]: ...


# What shop rows carry in the columns of the original example groups: a kind of their own, no
# impression slot (n_items 0, zero slot arrays and weights), no talent, no tier (-1). Every other
# column is 0 on the side that lacks it (original rows: shop 0 = padding, label 0).
_SHOP_ROW_FILL = {"kind_id": SHOP_KIND, "label_tier": -1}


def _rows(batch: Mapping[str, Tensor]) -> int:
    return len(next(iter(batch.values())))


def merge_batches(shop: Mapping[str, Tensor], original: Mapping[str, Tensor]) -> Batch:
    """Stack a shop batch (first, Bs rows) on a batch of original example groups (Bo rows).

    Shop rows get ``kind_id = SHOP_KIND``, ``n_items = 0``, zero slot arrays (G wide) and weights
    (``ctr_weight``, ``l2r``, ``follow_weight``), ``label_tier = -1``: every original loss
    (:func:`training.losses.example_weights`) gives them weight 0. Original rows get ``shop = 0``
    (padding), ``label = 0`` and ``example_id = 0``: the shop loss (:func:`shop_rows`) ignores them.

    Returns:
        The union of both sides' columns, Bs + Bo rows each.

    Raises:
        ValueError: ``original`` is not a batch of example groups (no ``kind_id``), or a column has
            a different width on the two sides (sequence settings differ).
    """
    if "kind_id" not in original:
        raise ValueError(f"the original batch has no 'kind_id' (columns {sorted(original)}); read "
                         f"features/training_examples with training.data.TRAIN_FIELDS")
    ns, no = _rows(shop), _rows(original)
    out: Batch = {}
    for key in sorted(set(shop) | set(original)):
        a, b = shop.get(key), original.get(key)
        if a is None and b is not None:
            a = torch.full((ns, *b.shape[1:]), _SHOP_ROW_FILL.get(key, 0), dtype=b.dtype)
        if b is None and a is not None:
            b = torch.zeros((no, *a.shape[1:]), dtype=a.dtype)
        if a is None or b is None:  # unreachable: the key comes from one of the two sides
            raise ValueError(f"column {key} is on neither side")
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"column {key} is {tuple(a.shape[1:])} wide in the shop rows and {tuple(b.shape[1:])} "
                             f"in the original examples; build both with the same sequences settings")
        out[key] = torch.cat([a, b.to(a.dtype)])
    return out


def shop_rows(batch: Mapping[str, Tensor]) -> Tensor:
    """(B,) bool: the shop-task rows of a batch (all rows of a shop-only batch)."""
    if "kind_id" in batch:
        return batch["kind_id"] == SHOP_KIND
    return torch.ones(_rows(batch), dtype=torch.bool)


class MixedBatches:
    """RA's batches: each shop batch of ``n`` rows stacked on ``ratio * n`` original example groups.

    The original source is read with batch size ``ratio * shop batch size`` and restarted (with
    another shuffling seed) when exhausted; an epoch ends with the shop source.
    """

    def __init__(self, shop: BatchSource, original: BatchSource, ratio: int) -> None:
        if ratio < 1:
            raise ValueError(f"ra_mix must be >= 1 original rows per shop row, got {ratio}")
        self.shop, self.original, self.ratio = shop, original, ratio

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        passes = 0
        orig = self.original.batches(epoch * 1000)
        shop = self.shop.batches(epoch)
        try:
            for sb in shop:
                ob = next(orig, None)
                if ob is None:
                    _close(orig)
                    passes += 1
                    orig = self.original.batches(epoch * 1000 + passes)
                    ob = next(orig, None)
                    if ob is None:
                        raise PlatformError("the original training examples are empty; rebuild the training set")
                n = self.ratio * _rows(sb)
                yield merge_batches(sb, {k: v[:n] for k, v in ob.items()})
        finally:
            _close(orig)
            _close(shop)


def _close(it: Iterator[Any]) -> None:
    """Stop a generator early (a Petastorm source then stops its reader threads)."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------- training tasks
def shop_loss(logit: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean binary cross-entropy of ``logit`` (B,) against ``label`` over the shop rows (:func:`shop_rows`)."""
    rows = shop_rows(batch)
    per_row = F.binary_cross_entropy_with_logits(logit, batch["label"].float(), reduction="none")
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp_min(1)


def _check_finite(loss: Tensor, method: str, step: int) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(f"{method}: non-finite loss at step {step}; lower transfer.lr")


class ShopTask:
    """Shop-preference loss and optimiser of a single-task model (RT, FT, RS)."""

    def __init__(self, method: str, model: ShopScorer, lr: float, tower_lr_scale: float = 1.0) -> None:
        """``tower_lr_scale``: a model with a user ``tower`` (FT) trains it at ``lr`` times this, the rest at ``lr``."""
        self.method = method
        self.model = model
        tower = getattr(model, "tower", None)
        if tower_lr_scale != 1.0 and isinstance(tower, nn.Module):
            own = {id(p) for p in tower.parameters()}
            self.optimizer = torch.optim.Adam(
                [{"params": list(tower.parameters()), "lr": lr * tower_lr_scale},
                 {"params": [p for p in model.parameters() if id(p) not in own], "lr": lr}], lr=lr)
        else:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.steps = 0

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One Adam step on a shop batch. Returns ``loss``."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = shop_loss(self.model.shop_logit(batch), batch)
        _check_finite(loss, self.method, self.steps)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"loss": float(loss.detach())}


class JointShopTask(TrainTask):
    """RA: the original tasks' losses (combined by the configured weighting) + ``shop_weight`` × shop
    loss, through the training step of :class:`training.step.TrainTask` (Adam at ``lr``, no weight decay)."""

    def __init__(self, model: JointShopDUPN, weighting: TaskWeighting, lr: float, shop_weight: float = 1.0) -> None:
        cfg = TrainingConfig(optimizer="adam", lr=lr, weight_decay=0.0)
        super().__init__(model, weighting, cfg, loss_names=model.dupn.spec.loss_names)
        self.method = "ra"
        self.shop_weight = shop_weight
        self._shop_loss = math.nan

    def extra_losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shop = shop_loss(outputs["shop_logit"], batch)
        self._shop_loss = float(shop.detach())
        return {"shop": self.shop_weight * shop}

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One Adam step on a mixed batch. Returns ``loss`` (shop), ``loss_total`` and ``loss_<task>``."""
        out = super().step(batch)
        return {"loss": self._shop_loss, "loss_total": out["loss"],
                **{f"loss_{k}": out[f"loss_{k}"] for k in self.loss_names}}


class StepTask(Protocol):
    method: str
    model: Any

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]: ...


# ---------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ShopEval:
    """Metrics of one scoring pass over a split: AUC, log loss, rows and a fingerprint of the example ids."""

    auc: float
    logloss: float
    rows: int
    fingerprint: int


class _Fingerprint:
    """Order-independent fingerprint of a set of example ids: (count, Σ id mod p), p = ``FINGERPRINT_MOD``."""

    def __init__(self) -> None:
        self.rows = 0
        self.value = 0

    def update(self, ids: Tensor) -> None:
        self.rows += int(ids.numel())
        self.value = (self.value + int(torch.remainder(ids.long(), FINGERPRINT_MOD).sum())) % FINGERPRINT_MOD


@torch.no_grad()
def evaluate_shop(model: ShopScorer, batches: Iterator[Batch]) -> ShopEval:
    """AUC and log loss of ``model`` (eval mode) over ``batches`` (shop rows with ``label`` and ``example_id``)."""
    model.eval()
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    fp = _Fingerprint()
    for batch in batches:
        probs.append(torch.sigmoid(model.shop_logit(batch)).numpy())
        labels.append(batch["label"].numpy())
        fp.update(batch["example_id"])
    if not probs:
        return ShopEval(math.nan, math.nan, 0, 0)
    p, y = np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.float64)
    return ShopEval(evaluation.auc(y, p, "shop_auc"), evaluation.log_loss(y, p), fp.rows, fp.value)


Scorer = Callable[[Any, BatchSource], ShopEval]


def score_split(model: ShopScorer, source: BatchSource) -> ShopEval:
    """One pass of :func:`evaluate_shop` over ``source`` (the default scorer of :func:`fit`)."""
    it = source.batches()
    try:
        return evaluate_shop(model, it)
    finally:
        _close(it)


def _selection_key(ev: ShopEval) -> tuple[int, float]:
    """Validation AUC; an epoch whose AUC is undefined (one class) ranks below every defined one and
    among those by log loss."""
    if not math.isnan(ev.auc):
        return 1, ev.auc
    return 0, -ev.logloss if not math.isnan(ev.logloss) else -math.inf


# ---------------------------------------------------------------------- the loop
@dataclass
class MethodResult:
    """One method's run: the validation curve, the epoch chosen on it, the test metrics of that
    epoch's weights (scored once), timing and the row fingerprints of every split."""

    method: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    chosen_epoch: int = 0
    selected_on: str = "valid_auc"
    test_auc: float = math.nan
    test_logloss: float = math.nan
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_rows: int = 0
    train_fingerprint: int = 0
    valid_rows: int = 0
    valid_fingerprint: int = 0
    test_rows: int = 0
    test_fingerprint: int = 0
    original_rows: int = 0
    parameters: int = 0
    notes: str = ""

    @property
    def name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method)

    @property
    def valid_aucs(self) -> list[float]:
        """Validation AUC after each epoch (epoch k at index k - 1)."""
        return [float(e["valid_auc"]) for e in self.epochs]

    @property
    def chosen(self) -> dict[str, float]:
        """The curve's row of the chosen epoch (empty before :func:`fit` chose one)."""
        return self.epochs[self.chosen_epoch - 1] if 0 < self.chosen_epoch <= len(self.epochs) else {}

    def fingerprints(self) -> dict[str, tuple[int, int]]:
        """split -> (rows, fingerprint) of what this method read."""
        return {"train": (self.train_rows, self.train_fingerprint), "valid": (self.valid_rows, self.valid_fingerprint),
                "test": (self.test_rows, self.test_fingerprint)}

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "name": self.name, "chosen_epoch": self.chosen_epoch,
                "selected_on": self.selected_on, "valid_auc": self.chosen.get("valid_auc", math.nan),
                "valid_aucs": self.valid_aucs, "test_auc": self.test_auc, "test_logloss": self.test_logloss,
                "seconds": self.seconds, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "epochs": len(self.epochs), "train_rows": self.train_rows, "original_rows_per_epoch":
                self.original_rows, "valid_rows": self.valid_rows, "test_rows": self.test_rows,
                "train_fingerprint": self.train_fingerprint, "valid_fingerprint": self.valid_fingerprint,
                "test_fingerprint": self.test_fingerprint, "parameters": self.parameters, "notes": self.notes,
                "curve": self.epochs}


def fit(task: StepTask, train: BatchSource, valid: BatchSource, test: BatchSource, epochs: int,
        started: float | None = None, scorer: Scorer = score_split, patience: int = 0) -> MethodResult:
    """Train ``task`` up to ``epochs`` passes over ``train``, choose the epoch on ``valid``, score ``test`` once.

    After each epoch the validation split is scored; the weights of the best validation epoch
    (highest AUC, the earliest on ties) are kept and restored at the end, and only then is the
    test split scored, once. With ``patience`` > 0 training stops after that many epochs in a row
    without a better validation score (early stopping, decided on validation only).

    Args:
        task: :class:`ShopTask` or :class:`JointShopTask` (anything with ``method``, ``model``, ``step``).
        train, valid, test: batch sources of the three splits (shop rows carry ``example_id``, ``label``).
        epochs: passes over ``train`` (>= 1), the cap.
        started: ``time.perf_counter()`` when the method started (model building counts).
        scorer: ``scorer(model, source) -> ShopEval`` (default :func:`score_split`).
        patience: epochs without a better validation score before stopping (0 = never stop early).

    Returns:
        The curve (``epoch`` 1..the last epoch trained, ``valid_auc``, ``valid_logloss``, ``train_loss``, seconds),
        the chosen epoch and the test metrics of its weights. ``task.model`` holds those weights.

    Raises:
        PlatformError: ``epochs`` < 1.
        DataQualityError: an epoch read other training or validation rows than the first, or the
            validation split is empty.
    """
    if epochs < 1:
        raise PlatformError(f"transfer.epochs must be >= 1, got {epochs}")
    if patience < 0:
        raise PlatformError(f"transfer.patience must be >= 0, got {patience}")
    started = time.perf_counter() if started is None else started
    model = task.model
    result = MethodResult(task.method, parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    best_key: tuple[int, float] | None = None
    best_state: dict[str, Tensor] | None = None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        fp = _Fingerprint()
        others = 0
        sums: dict[str, float] = {}
        steps = 0
        it = train.batches(epoch - 1)
        try:
            for batch in it:
                stats = task.step(batch)
                rows = shop_rows(batch)
                fp.update(batch["example_id"][rows])
                others += int((~rows).sum())
                steps += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        finally:
            _close(it)
        train_s = time.perf_counter() - t0
        result.train_seconds += train_s
        if epoch == 1:
            result.train_rows, result.train_fingerprint, result.original_rows = fp.rows, fp.value, others
        elif (fp.rows, fp.value) != (result.train_rows, result.train_fingerprint):
            raise DataQualityError(f"{task.method}: epoch {epoch} read {fp.rows} training rows, epoch 1 read "
                                   f"{result.train_rows} (or other rows); the reader lost data")
        t1 = time.perf_counter()
        ev = scorer(model, valid)
        eval_s = time.perf_counter() - t1
        result.eval_seconds += eval_s
        if ev.rows == 0:
            raise DataQualityError(f"{task.method}: the validation split yielded no row; rebuild the transfer examples")
        if epoch == 1:
            result.valid_rows, result.valid_fingerprint = ev.rows, ev.fingerprint
        elif (ev.rows, ev.fingerprint) != (result.valid_rows, result.valid_fingerprint):
            raise DataQualityError(f"{task.method}: epoch {epoch} scored {ev.rows} validation rows, epoch 1 "
                                   f"{result.valid_rows} (or other rows); the reader lost data")
        key = _selection_key(ev)
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_state = key, copy.deepcopy(model.state_dict())
            result.chosen_epoch = epoch
            result.selected_on = "valid_auc" if key[0] == 1 else "valid_logloss"
        row = {"epoch": float(epoch), "valid_auc": ev.auc, "valid_logloss": ev.logloss, "train_seconds": train_s,
               "eval_seconds": eval_s, "steps": float(steps), "elapsed_seconds": time.perf_counter() - started,
               **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()}}
        result.epochs.append(row)
        logger.info("%s epoch %d: %d shop rows (+%d original) in %.1fs, train loss %.4f, validation AUC %.4f%s",
                    task.method, epoch, fp.rows, others, train_s, row.get("train_loss", math.nan), ev.auc,
                    " (best so far)" if improved else "")
        if patience and epoch - result.chosen_epoch >= patience and epoch < epochs:
            logger.info("%s: stopped after epoch %d, %d epochs without a better validation score", task.method,
                        epoch, patience)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    t2 = time.perf_counter()
    final = scorer(model, test)
    result.eval_seconds += time.perf_counter() - t2
    result.test_auc, result.test_logloss = final.auc, final.logloss
    result.test_rows, result.test_fingerprint = final.rows, final.fingerprint
    result.seconds = time.perf_counter() - started
    logger.info("%s: chose epoch %d of %d on validation (AUC %.4f); test AUC %.4f, log loss %.4f", task.method,
                result.chosen_epoch, len(result.epochs), result.chosen.get("valid_auc", math.nan), final.auc,
                final.logloss)
    return result


# ---------------------------------------------------------------------- the four methods
@dataclass(frozen=True)
class TransferSettings:
    """What every method shares (``transfer.*`` plus reader settings and the RA weighting)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    lr: float
    seed: int
    ra_mix: int = DEFAULT_RA_MIX
    patience: int = 0
    ft_tower_lr_scale: float = 1.0
    price_match: bool = False
    head_input: str = "full"
    rt_lr: float | None = None
    rt_epochs: int | None = None
    reader_workers: int = 1
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    torch_threads: int | None = None

    @property
    def rt_step(self) -> float:
        """RT's learning rate: ``rt_lr``, else the shared ``lr``."""
        return self.rt_lr or self.lr

    @property
    def rt_cap(self) -> int:
        """RT's cap on epochs: ``rt_epochs``, else the shared ``epochs``."""
        return self.rt_epochs or self.epochs


def _source(files: Sequence[str], fields: Sequence[str], s: TransferSettings, train: bool,
            batch_size: int | None = None) -> PetastormSource:
    if not files:
        raise PlatformError("no Parquet file to read (an empty split of the transfer examples?)")
    size = batch_size or (s.batch_size if train else s.eval_batch_size)
    return PetastormSource(files=tuple(files), fields=tuple(fields), batch_size=size, shuffle=train,
                           bucket_by_length=train, workers=s.reader_workers, seed=s.seed)


def _fit_shop(task: StepTask, files: TransferFiles, fields: Sequence[str], s: TransferSettings,
              started: float, train: BatchSource | None = None, epochs: int | None = None) -> MethodResult:
    """:func:`fit` on the three splits of ``files`` (``train`` replaces the training source, for RA;
    ``epochs`` the cap, default ``s.epochs``)."""
    return fit(task, train if train is not None else _source(files.train, fields, s, True),
               _source(files.valid, fields, s, False), _source(files.test, fields, s, False),
               epochs or s.epochs, started, patience=s.patience)


def run_rt(files: TransferFiles, rep_dim: int, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RT: a shallow :class:`RepresentationTransfer` on the published vectors (Ds = the spec's shop_dim), at
    ``rt_lr`` for up to ``rt_epochs`` epochs (default: the shared ``lr`` and ``epochs``)."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = RepresentationTransfer(rep_dim, spec, s.price_match, s.head_input)
    return _fit_shop(ShopTask("rt", model, s.rt_step), files, RT_FIELDS, s, started, epochs=s.rt_cap)


def run_ft(files: TransferFiles, champion: DUPNModel, s: TransferSettings) -> MethodResult:
    """FT: the base model's user tower (a copy) + a new shop head, trained end to end (the tower at
    ``ft_tower_lr_scale`` times the learning rate)."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = ShopPreferenceNet(copy.deepcopy(champion.tower), champion.spec.model.head_hidden,
                              champion.spec.model.dropout, s.price_match, s.head_input)
    return _fit_shop(ShopTask("ft", model, s.lr, s.ft_tower_lr_scale), files, NET_FIELDS, s, started)


def run_rs(files: TransferFiles, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RS: the FT architecture, freshly initialised, trained on the shop task only."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = ShopPreferenceNet(UserTower(spec), spec.model.head_hidden, spec.model.dropout,
                              s.price_match, s.head_input)
    return _fit_shop(ShopTask("rs", model, s.lr), files, NET_FIELDS, s, started)


def run_ra(files: TransferFiles, original: OriginalData, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RA: a fresh DUPN model (``spec``) + shop head on original example groups and shop rows mixed
    ``ra_mix : 1``; validation and test score the shop task only."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    dupn = build_model(spec)
    if not isinstance(dupn, DUPNModel):
        raise PlatformError(f"'ra' retrains a DUPN model; the base version's family is {spec.model.family}")
    model = JointShopDUPN(dupn, spec.model.head_hidden, spec.model.dropout, s.price_match, s.head_input)
    weighting = build_weighting(s.weighting, spec.loss_names, last_shared_layer(model.dupn))
    train = MixedBatches(_source(files.train, NET_FIELDS, s, True),
                         _source(original.files, (*TRAIN_FIELDS, *(SIDE_FIELDS if spec.reads_side else ())), s, True,
                                 s.batch_size * s.ra_mix), s.ra_mix)
    result = _fit_shop(JointShopTask(model, weighting, s.lr), files, NET_FIELDS, s, started, train=train)
    result.notes = (f"budget: {s.ra_mix} original rows per shop row, {result.original_rows:,} of the "
                    f"{original.rows:,} original training rows ({original.days[0]}..{original.days[-1]}) per epoch")
    return result


def run_methods(methods: Sequence[str], files: TransferFiles, champion: TaskModel, rep_dim: int,
                original: OriginalData | None, s: TransferSettings,
                expected: Mapping[str, tuple[int, int]] | None = None) -> list[MethodResult]:
    """Run ``methods`` (a subset of ``METHODS``) one after the other in this process.

    Args:
        expected: split -> (rows, fingerprint) of the written table
            (:attr:`features.transfer.ExampleStats.fingerprints`); every method must have read
            exactly these rows of every split.

    Raises:
        PlatformError: an unknown method, ``ra`` without original data, or a base model that is not DUPN.
        DataQualityError: a method read other rows than ``expected``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PlatformError(f"unknown transfer methods {unknown}; choose from {list(METHODS)}")
    if not isinstance(champion, DUPNModel):
        raise PlatformError(f"the base model is a {champion.spec.model.family} model ({type(champion).__name__}); "
                            f"the transfer methods start from a DUPN user tower: pass --model-version of a DUPN "
                            f"version")
    if "ra" in methods and original is None:
        raise PlatformError("method 'ra' needs the original training examples")
    prepare_torch(s.torch_threads or max(1, os.cpu_count() or 1))
    spec = champion.spec
    out = []
    for m in methods:
        logger.info("transfer method %s (%s)", m, METHOD_NAMES[m])
        if m == "rt":
            out.append(run_rt(files, rep_dim, spec, s))
        elif m == "ft":
            out.append(run_ft(files, champion, s))
        elif m == "rs":
            out.append(run_rs(files, spec, s))
        elif original is not None:
            out.append(run_ra(files, original, spec, s))
        if expected is None:
            continue
        read = out[-1].fingerprints()
        wrong = {sp: (read[sp], expected.get(sp)) for sp in SPLITS if read[sp] != expected.get(sp)}
        if wrong:
            raise DataQualityError(f"{m} read other rows than the table holds ((rows, fingerprint) read vs "
                                   f"written, per split): {wrong}")
    return out


# ---------------------------------------------------------------------- reporting
class Tracker(Protocol):
    """What the report is logged to (``registry.tracking.MlflowTracker`` in the job, a fake in tests)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dict(self, data: Any, path: str) -> None: ...

    def log_figure(self, figure: Any, path: str) -> None: ...


def comparison_metrics(results: Sequence[MethodResult]) -> dict[str, float]:
    """The summary per method: ``<m>_chosen_epoch``, ``<m>_chosen_valid_auc``, ``<m>_test_auc``,
    ``<m>_test_logloss`` (the chosen weights, scored once), ``<m>_seconds``, ``<m>_train_seconds``,
    ``<m>_epochs`` (trained)."""
    out: dict[str, float] = {}
    for r in results:
        out.update({f"{r.method}_chosen_epoch": float(r.chosen_epoch),
                    f"{r.method}_chosen_valid_auc": float(r.chosen.get("valid_auc", math.nan)),
                    f"{r.method}_test_auc": r.test_auc, f"{r.method}_test_logloss": r.test_logloss,
                    f"{r.method}_seconds": r.seconds, f"{r.method}_train_seconds": r.train_seconds,
                    f"{r.method}_epochs": float(len(r.epochs))})
    return out


def _valid_curve(r: MethodResult) -> str:
    return ", ".join(f"**{a:.4f}**" if i + 1 == r.chosen_epoch else f"{a:.4f}" for i, a in enumerate(r.valid_aucs))


def comparison_table(results: Sequence[MethodResult]) -> str:
    """Markdown table: method, chosen epoch, validation AUC per epoch (the chosen one in bold), test AUC
    and log loss of the chosen weights, wall time, training time, rows."""
    lines = ["| method | | chosen epoch | validation AUC per epoch | test AUC | test log loss | seconds | train s "
             "| shop train rows | original rows / epoch | valid rows | test rows |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.method.upper()} | {r.name} | {r.chosen_epoch} of {len(r.epochs)} | {_valid_curve(r)} | "
                     f"{r.test_auc:.4f} | {r.test_logloss:.4f} | {r.seconds:.1f} | {r.train_seconds:.1f} | "
                     f"{r.train_rows:,} | {r.original_rows:,} | {r.valid_rows:,} | {r.test_rows:,} |")
    return "\n".join(lines)


def learning_curve_figure(results: Sequence[MethodResult]) -> Any:
    """Validation AUC of every method per epoch (left) and against wall time (right); the chosen epoch
    is marked with a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        xs = [e["epoch"] for e in r.epochs]
        ys = r.valid_aucs
        line, = ax1.plot(xs, ys, marker="o", label=f"{r.method.upper()} ({r.name})")
        ax2.plot([e["elapsed_seconds"] for e in r.epochs], ys, marker="o", color=line.get_color(),
                 label=r.method.upper())
        if r.chosen:
            c = r.chosen
            for ax, x in ((ax1, c["epoch"]), (ax2, c["elapsed_seconds"])):
                ax.plot([x], [c["valid_auc"]], marker="*", markersize=15, color=line.get_color(), linestyle="none")
    ax1.set_xticks(range(1, max((len(r.epochs) for r in results), default=1) + 1))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation AUC (shop preference)")
    ax1.set_title("★ chosen epoch (its weights are scored on test once)", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("wall time (s)")
    ax2.set_ylabel("validation AUC")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_comparison(tracker: Tracker, results: Sequence[MethodResult], params: Mapping[str, Any],
                   context: Mapping[str, Any]) -> str:
    """Log params, the per-epoch validation curves (``<m>_valid_auc``, ``<m>_valid_logloss``,
    ``<m>_train_loss``, ``<m>_elapsed_seconds`` at steps 1..epochs), the summary
    (:func:`comparison_metrics`, the test metrics once per method), the comparison as JSON and
    markdown, and the learning-curve figure. Returns the markdown table."""
    tracker.log_params(params)
    for r in results:
        for e in r.epochs:
            tracker.log_metrics({f"{r.method}_valid_auc": e["valid_auc"], f"{r.method}_valid_logloss":
                                 e["valid_logloss"], f"{r.method}_train_loss": e.get("train_loss", math.nan),
                                 f"{r.method}_elapsed_seconds": e["elapsed_seconds"]}, step=int(e["epoch"]))
    tracker.log_metrics(comparison_metrics(results))
    table = comparison_table(results)
    tracker.log_dict({"context": dict(context), "methods": [r.as_dict() for r in results]},
                     "transfer/comparison.json")
    notes = [f"* {r.method.upper()}: {r.notes}" for r in results if r.notes]
    protocol = ("Each method's epoch is chosen on the validation split (highest AUC); the test split is scored "
                "once, with the chosen weights.")
    text = "\n".join([f"# {context.get('title', 'transfer')}", "", protocol, "", table, "", *notes, ""])
    log_text = getattr(tracker, "log_text", None)
    if callable(log_text):
        log_text(text, "transfer/comparison.md")
    else:
        tracker.log_dict({"markdown": text}, "transfer/comparison_md.json")
    if results:
        import matplotlib.pyplot as plt

        fig = learning_curve_figure(results)
        try:
            tracker.log_figure(fig, "transfer/learning_curves.png")
        finally:
            plt.close(fig)
    return table
