"""The DUPN model: user tower -> universal representation -> multi-task design -> task heads.

Shapes: B = batch size, L = max_len, K = max_tags, F = rank_dim, R = representation_dim.
A batch is a ``dict[str, Tensor]`` with the columns of ``features/training_examples``
(user side ``seq_*``, ``user_*``; example side ``query_tokens``, ``item*``, ``talent*``,
``rank_features``). The tower reads only user-side keys (and ``query_tokens`` if present);
each head reads only its own example-side keys.

The universal representation is the user tower's output for every multi-task design;
the designs (:class:`TaskMixer` subclasses) only change what each head reads.
"""
from __future__ import annotations

import logging
from typing import Mapping, cast

import torch
from torch import Tensor, nn

from training.modules import (
    AttentionPooling, FrozenNorm, ItemEmbedding, PropertyEmbedding, PropertyGatedLSTM, UserProfile, bag_mean,
    embedding, embedding_bag, mlp)
from training.spec import PPP_CLASSES, ModelSpec

logger = logging.getLogger(__name__)

Batch = Mapping[str, Tensor]
USER_KEYS = ("seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_log_price", "seq_behavior",
             "seq_scene", "seq_time_bucket", "seq_len", "user_age", "user_gender", "user_city", "user_dense")
ITEM_KEYS = ("item", "item_shop", "item_brand", "item_category", "item_tags", "item_log_price")


def _need(batch: Batch, key: str, user: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"batch lacks '{key}', needed by {user}; batches need the columns of "
                       f"features/training_examples (have {sorted(batch)})")
    return batch[key]


def _norm(spec: ModelSpec, name: str) -> FrozenNorm:
    mean, var = spec.norm[name]
    return FrozenNorm(mean, var)


# ====================================================================== user tower
class UserTower(nn.Module):
    """Behaviour sequence + profile (+ query) -> the universal user representation.

    item/property embeddings -> property-gated LSTM -> attention pooling (query, user,
    properties) -> linear projection to ``pooled_dim`` -> concat with the profile vector u ->
    Linear -> ReLU -> representation (B, R). The final Linear is the last shared layer.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.model
        self.max_tags = spec.max_tags
        self.property_in_lstm = m.property_in in ("all", "lstm")
        self.property_in_attention = m.property_in in ("all", "attention")
        self.items = ItemEmbedding(spec.vocab, m, {"seq_log_price": _norm(spec, "seq_log_price"),
                                                   "item_log_price": _norm(spec, "item_log_price")})
        uses_property = self.property_in_lstm or self.property_in_attention
        self.properties = PropertyEmbedding(spec.vocab, m) if uses_property else None
        property_dim = self.properties.out_dim if self.properties is not None else 0
        self.lstm = PropertyGatedLSTM(self.items.out_dim, property_dim, m.lstm_hidden, self.property_in_lstm)
        self.query = embedding_bag(spec.vocab["query_token"], m.query_dim)
        self.profile = UserProfile(spec.vocab, m, _norm(spec, "user_dense"))
        self.attention = AttentionPooling(m.lstm_hidden, property_dim if self.property_in_attention else 0,
                                          m.query_dim, self.profile.out_dim, m.attention_hidden)
        self.pool_projection = nn.Linear(m.lstm_hidden, m.pooled_dim)
        self.projection = nn.Linear(m.pooled_dim + self.profile.out_dim, m.representation_dim)
        self.out_dim = m.representation_dim

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Representation of each row's user.

        Args:
            batch: user-side keys (``USER_KEYS``); ``query_tokens`` (B, Q) optional
                (absent or all-zero = no query, as at serving).

        Returns:
            ``representation`` (B, R), ``attention`` (B, L) weights, ``pooled`` (B, pooled_dim).
        """
        who = "the user tower"
        seq_item = _need(batch, "seq_item", who)
        b, seq_l = seq_item.shape
        tags = _need(batch, "seq_tags", who)
        if tags.shape[-1] != seq_l * self.max_tags:
            raise ValueError(f"seq_tags has {tags.shape[-1]} columns, expected max_len * max_tags = "
                             f"{seq_l} * {self.max_tags}; the spec does not match the data")
        seq_len = _need(batch, "seq_len", who)
        # Right padding: steps after the longest sequence of the batch affect nothing; skip them.
        n = max(1, min(seq_l, int(seq_len.max()))) if b else seq_l

        def seq(key: str) -> Tensor:
            return _need(batch, key, who)[:, :n]

        x = self.items(seq("seq_item"), seq("seq_shop"), seq("seq_brand"), seq("seq_category"),
                       tags.reshape(b, seq_l, self.max_tags)[:, :n], seq("seq_log_price"), "seq_log_price")
        p = None
        if self.properties is not None:
            p = self.properties(seq("seq_behavior"), seq("seq_scene"), seq("seq_time_bucket"))
        states = self.lstm(x, p if self.property_in_lstm else None)
        u = self.profile(_need(batch, "user_age", who), _need(batch, "user_gender", who),
                         _need(batch, "user_city", who), _need(batch, "user_dense", who))
        if "query_tokens" in batch:
            q = bag_mean(self.query, batch["query_tokens"])
        else:
            q = u.new_zeros(b, self.query.embedding_dim)
        pooled, weights = self.attention(states, seq_len, q, u, p if self.property_in_attention else None)
        if n < seq_l:
            weights = torch.nn.functional.pad(weights, (0, seq_l - n))
        pooled = self.pool_projection(pooled)
        representation = torch.relu(self.projection(torch.cat([pooled, u], dim=-1)))
        return {"representation": representation, "attention": weights, "pooled": pooled}


# ====================================================================== multi-task designs
class TaskMixer(nn.Module):
    """Turns the representation (B, R) into one input vector (B, out_dim) per head."""

    out_dim: int

    def __init__(self, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        """representation: (B, R). Returns head name -> (B, out_dim)."""
        raise NotImplementedError


class SharedBottom(TaskMixer):
    """Every head reads the representation itself (DUPN)."""

    def __init__(self, in_dim: int, heads: tuple[str, ...]) -> None:
        super().__init__(heads)
        self.out_dim = in_dim

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        return {h: representation for h in self.heads}


def _experts(n: int, in_dim: int, out_dim: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU()) for _ in range(n))


def _gated(gate: nn.Module, x: Tensor, experts: Tensor) -> Tensor:
    """softmax(gate(x)) (B, E) weighted sum of experts (B, E, D) -> (B, D)."""
    return torch.einsum("be,bed->bd", torch.softmax(gate(x), dim=-1), experts)


class MMoE(TaskMixer):
    """Multi-gate mixture of experts (Ma et al., KDD 2018): shared experts, one softmax gate per head."""

    def __init__(self, in_dim: int, heads: tuple[str, ...], num_experts: int, expert_dim: int) -> None:
        super().__init__(heads)
        self.experts = _experts(num_experts, in_dim, expert_dim)
        self.gates = nn.ModuleDict({h: nn.Linear(in_dim, num_experts) for h in heads})
        self.out_dim = expert_dim

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        experts = torch.stack([e(representation) for e in self.experts], dim=1)
        return {h: _gated(self.gates[h], representation, experts) for h in self.heads}


class ExtractionLayer(nn.Module):
    """One customized-gate-control level of PLE (Tang et al., RecSys 2020).

    Shared experts plus ``num_task_experts`` per head; each head's gate mixes its own and the
    shared experts; with ``shared_gate`` a gate over all experts produces the next level's
    shared input.
    """

    def __init__(self, in_dim: int, heads: tuple[str, ...], num_shared: int, num_task: int, expert_dim: int,
                 shared_gate: bool) -> None:
        super().__init__()
        self.heads = heads
        self.shared = _experts(num_shared, in_dim, expert_dim)
        self.task = nn.ModuleDict({h: _experts(num_task, in_dim, expert_dim) for h in heads})
        self.gates = nn.ModuleDict({h: nn.Linear(in_dim, num_task + num_shared) for h in heads})
        self.shared_gate = nn.Linear(in_dim, num_shared + num_task * len(heads)) if shared_gate else None

    def forward(self, task_in: Mapping[str, Tensor], shared_in: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """task_in: head -> (B, D_in); shared_in: (B, D_in). Returns head -> (B, D), shared (B, D) or None."""
        shared = [e(shared_in) for e in self.shared]
        own = {h: [e(task_in[h]) for e in cast(nn.ModuleList, self.task[h])] for h in self.heads}
        out = {h: _gated(self.gates[h], task_in[h], torch.stack(own[h] + shared, dim=1)) for h in self.heads}
        next_shared = None
        if self.shared_gate is not None:
            every = shared + [x for h in self.heads for x in own[h]]
            next_shared = _gated(self.shared_gate, shared_in, torch.stack(every, dim=1))
        return out, next_shared


class PLE(TaskMixer):
    """Progressive layered extraction: ``levels`` stacked extraction layers (1 level = CGC)."""

    def __init__(self, in_dim: int, heads: tuple[str, ...], levels: int, num_shared: int, num_task: int,
                 expert_dim: int) -> None:
        super().__init__(heads)
        self.levels = nn.ModuleList(
            ExtractionLayer(in_dim if i == 0 else expert_dim, heads, num_shared, num_task, expert_dim,
                            shared_gate=i < levels - 1)
            for i in range(levels))
        self.out_dim = expert_dim

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        task_in: dict[str, Tensor] = {h: representation for h in self.heads}
        shared: Tensor | None = representation
        for level in self.levels:
            if shared is None:
                raise RuntimeError("inner PLE level produced no shared output")
            task_in, shared = level(task_in, shared)
        return task_in


class CrossStitch(TaskMixer):
    """Cross-stitch networks (Misra et al., CVPR 2016): one two-layer tower per head, and after
    each hidden layer a learned (T x T) linear mix of the towers' activations, initialised
    near identity (0.9 on the diagonal, the rest spread over the other towers)."""

    def __init__(self, in_dim: int, heads: tuple[str, ...], hidden: int, dropout: float) -> None:
        super().__init__(heads)
        n = len(heads)
        self.layer1 = nn.ModuleDict({h: nn.Linear(in_dim, hidden) for h in heads})
        self.layer2 = nn.ModuleDict({h: nn.Linear(hidden, hidden) for h in heads})
        init = torch.full((n, n), 0.1 / (n - 1)) if n > 1 else torch.zeros(n, n)
        init.fill_diagonal_(0.9 if n > 1 else 1.0)
        self.stitch1 = nn.Parameter(init.clone())
        self.stitch2 = nn.Parameter(init.clone())
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden

    def _stitch(self, alpha: Tensor, per_head: list[Tensor]) -> list[Tensor]:
        mixed = torch.einsum("kj,bjd->bkd", alpha, torch.stack(per_head, dim=1))
        return list(mixed.unbind(dim=1))

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        hs = [self.dropout(torch.relu(self.layer1[h](representation))) for h in self.heads]
        hs = self._stitch(self.stitch1, hs)
        hs = [self.dropout(torch.relu(self.layer2[h](x))) for h, x in zip(self.heads, hs)]
        hs = self._stitch(self.stitch2, hs)
        return dict(zip(self.heads, hs))


def build_mixer(spec: ModelSpec, in_dim: int) -> TaskMixer:
    """The multi-task design ``spec.model.architecture`` over heads ``spec.head_names``."""
    m, heads = spec.model, spec.head_names
    if m.architecture == "shared_bottom":
        return SharedBottom(in_dim, heads)
    if m.architecture == "mmoe":
        return MMoE(in_dim, heads, m.num_experts, m.expert_dim)
    if m.architecture == "cgc":
        return PLE(in_dim, heads, 1, m.num_experts, m.num_task_experts, m.expert_dim)
    if m.architecture == "ple":
        return PLE(in_dim, heads, m.ple_levels, m.num_experts, m.num_task_experts, m.expert_dim)
    if m.architecture == "cross_stitch":
        return CrossStitch(in_dim, heads, m.expert_dim, m.dropout)
    raise ValueError(f"unknown architecture '{m.architecture}'; choose shared_bottom, mmoe, cgc, ple, cross_stitch")


# ====================================================================== task heads
class ItemHead(nn.Module):
    """CTR (or ESMM's CVR): MLP(task input ‖ target item vector ‖ (P·task input) ⊙ item) -> logit (B,).

    The element-wise product of the projected task input with the item vector hands the MLP
    the user-item match directly (an MLP alone approximates products poorly).
    """

    def __init__(self, in_dim: int, item_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.interact = nn.Linear(in_dim, item_dim)
        self.mlp = mlp(in_dim + 2 * item_dim, [hidden], 1, dropout)

    def forward(self, task_in: Tensor, item: Tensor) -> Tensor:
        """task_in (B, D), item (B, Di) -> logit (B,)."""
        return self.mlp(torch.cat([task_in, item, self.interact(task_in) * item], dim=-1)).squeeze(-1)


class L2RHead(nn.Module):
    """The paper's learning-to-rank head: two layers turn the task input into a weight per rank
    feature (and an offset), the score is ``<weights, normalised rank_features> + offset``.

    The offset is the same for every item of one list (one user at one instant), so it never
    changes a ranking; the pointwise logistic loss needs it, or the weights of features whose
    mean differs from zero in the training lists would absorb the base rate.
    """

    def __init__(self, in_dim: int, rank_dim: int, hidden: int, dropout: float, rank_norm: FrozenNorm) -> None:
        super().__init__()
        self.rank_dim = rank_dim
        self.weights = mlp(in_dim, [hidden], rank_dim + 1, dropout)
        self.rank_norm = rank_norm

    def forward(self, task_in: Tensor, rank_features: Tensor) -> Tensor:
        """task_in (B, D), rank_features (B, F) -> score (B,)."""
        out = self.weights(task_in)
        w, offset = out[:, :self.rank_dim], out[:, self.rank_dim]
        return (w * self.rank_norm(rank_features.float())).sum(dim=-1) + offset


class FollowHead(nn.Module):
    """Talent follow: MLP(task input ‖ talent ‖ talent category embeddings ‖ their product with the
    projected task input) -> logit (B,)."""

    def __init__(self, in_dim: int, n_talent: int, n_talent_category: int, talent_dim: int, category_dim: int,
                 hidden: int, dropout: float) -> None:
        super().__init__()
        self.talent = embedding(n_talent, talent_dim)
        self.talent_category = embedding(n_talent_category, category_dim)
        self.interact = nn.Linear(in_dim, talent_dim + category_dim)
        self.mlp = mlp(in_dim + 2 * (talent_dim + category_dim), [hidden], 1, dropout)

    def forward(self, task_in: Tensor, talent: Tensor, talent_category: Tensor) -> Tensor:
        """task_in (B, D), talent (B,), talent_category (B,) -> logit (B,); with the same
        user-talent product term as :class:`ItemHead`."""
        t = torch.cat([self.talent(talent), self.talent_category(talent_category)], dim=-1)
        return self.mlp(torch.cat([task_in, t, self.interact(task_in) * t], dim=-1)).squeeze(-1)


class PPPHead(nn.Module):
    """Purchasing-power prediction: Dropout -> Linear -> 7 tier logits (B, 7)."""

    def __init__(self, in_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, PPP_CLASSES)

    def forward(self, task_in: Tensor) -> Tensor:
        return self.linear(self.dropout(task_in))


# ====================================================================== the model
class DUPNModel(nn.Module):
    """DUPN: :class:`UserTower`, a :class:`TaskMixer` and one head per enabled task.

    ``forward(batch)`` returns the tower outputs (``representation``, ``attention``,
    ``pooled``) and, per enabled task, ``ctr_logit`` (+ ``cvr_logit`` and ``ctcvr_prob``
    under ESMM), ``l2r_score``, ``follow_logit``, ``ppp_logits`` (B, 7); all (B,) otherwise.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        m = spec.model
        self.tower = UserTower(spec)
        self.mixer = build_mixer(spec, self.tower.out_dim)
        d, item_dim = self.mixer.out_dim, self.tower.items.out_dim
        heads: dict[str, nn.Module] = {}
        for name in spec.head_names:
            if name in ("ctr", "cvr"):
                heads[name] = ItemHead(d, item_dim, m.head_hidden, m.dropout)
            elif name == "l2r":
                heads[name] = L2RHead(d, spec.rank_dim, m.head_hidden, m.dropout, _norm(spec, "rank_features"))
            elif name == "follow":
                heads[name] = FollowHead(d, spec.vocab["talent"], spec.vocab["talent_category"], m.talent_dim,
                                         m.category_dim, m.head_hidden, m.dropout)
            elif name == "ppp":
                heads[name] = PPPHead(d, m.dropout)
        self.heads = nn.ModuleDict(heads)
        logger.debug("built DUPN model (%s, property_in=%s, heads %s): %d parameters", m.architecture,
                     m.property_in, list(heads), sum(p.numel() for p in self.parameters()))

    def target_items(self, batch: Batch) -> Tensor:
        """Target item vectors (B, Di) from the example-side item keys (the shared ItemEmbedding)."""
        who = "the ctr head"
        return self.tower.items(_need(batch, "item", who), _need(batch, "item_shop", who),
                                _need(batch, "item_brand", who), _need(batch, "item_category", who),
                                _need(batch, "item_tags", who), _need(batch, "item_log_price", who),
                                "item_log_price")

    def heads_forward(self, task_in: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """Outputs of every head from the per-head inputs (B, D) and the example-side keys."""
        out: dict[str, Tensor] = {}
        if "ctr" in self.heads:
            items = self.target_items(batch)
            out["ctr_logit"] = self.heads["ctr"](task_in["ctr"], items)
            if "cvr" in self.heads:
                out["cvr_logit"] = self.heads["cvr"](task_in["cvr"], items)
                out["ctcvr_prob"] = torch.sigmoid(out["ctr_logit"]) * torch.sigmoid(out["cvr_logit"])
        if "l2r" in self.heads:
            out["l2r_score"] = self.heads["l2r"](task_in["l2r"], _need(batch, "rank_features", "the l2r head"))
        if "follow" in self.heads:
            out["follow_logit"] = self.heads["follow"](task_in["follow"], _need(batch, "talent", "the follow head"),
                                                       _need(batch, "talent_category", "the follow head"))
        if "ppp" in self.heads:
            out["ppp_logits"] = self.heads["ppp"](task_in["ppp"])
        return out

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """batch: a training-examples batch. Returns the tower outputs and every head's output."""
        out = self.tower(batch)
        out.update(self.heads_forward(self.mixer(out["representation"]), batch))
        return out

    def user_part(self) -> "UserPart":
        """The serving half that needs only user-side keys (shares this model's parameters)."""
        return UserPart(self)

    def item_scorer(self) -> "ItemScorer":
        """The scoring half: CTR probabilities from a precomputed representation (shares parameters)."""
        return ItemScorer(self)

    def score_items(self, representation: Tensor, batch: Batch) -> Tensor:
        """CTR probability (B,) of row-aligned candidate items for representations (B, R).

        To score C candidates per user, repeat each representation C times
        (``representation.repeat_interleave(C, 0)``) and flatten the candidates.
        """
        return self.item_scorer()(representation, batch)


class UserPart(nn.Module):
    """``forward(user batch) -> (representation (B, R), ppp_probs (B, 7))``.

    The paper's serving split: the representation (and purchasing power) is computed once
    per user, nightly. No query exists at serving, so ``query_tokens`` is ignored.
    ``ppp_probs`` is uniform (1/7) when the model has no PPP task. The module holds the
    model's own submodules: ``.eval()`` on it switches them (and the model) to eval mode.
    """

    def __init__(self, model: DUPNModel) -> None:
        super().__init__()
        self.tower = model.tower
        self.mixer = model.mixer
        self.ppp = model.heads["ppp"] if "ppp" in model.heads else None

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        user_batch = {k: v for k, v in batch.items() if k != "query_tokens"}
        representation = self.tower(user_batch)["representation"]
        if self.ppp is None:
            probs = representation.new_full((representation.shape[0], PPP_CLASSES), 1.0 / PPP_CLASSES)
        else:
            probs = torch.softmax(self.ppp(self.mixer(representation)["ppp"]), dim=-1)
        return representation, probs


class ItemScorer(nn.Module):
    """``forward(representation (B, R), item batch) -> CTR probability (B,)`` without the user tower.

    Reads the ``ITEM_KEYS`` of the batch. The CTR head's input is computed from the
    representation through the multi-task design, as in training.
    """

    def __init__(self, model: DUPNModel) -> None:
        super().__init__()
        if "ctr" not in model.heads:
            raise ValueError(f"scoring items needs the ctr task; this model has heads {list(model.heads)}")
        self.items = model.tower.items
        self.mixer = model.mixer
        self.ctr = model.heads["ctr"]

    def forward(self, representation: Tensor, batch: Batch) -> Tensor:
        who = "item scoring"
        items = self.items(_need(batch, "item", who), _need(batch, "item_shop", who),
                           _need(batch, "item_brand", who), _need(batch, "item_category", who),
                           _need(batch, "item_tags", who), _need(batch, "item_log_price", who), "item_log_price")
        if representation.shape[0] != items.shape[0]:
            raise ValueError(f"{representation.shape[0]} representations for {items.shape[0]} items; "
                             "repeat each representation once per candidate")
        return torch.sigmoid(self.ctr(self.mixer(representation)["ctr"], items))


def build_model(spec: ModelSpec) -> DUPNModel:
    """A freshly initialised DUPN model for ``spec``."""
    return DUPNModel(spec)


def unwrap(model: nn.Module) -> DUPNModel:
    """The :class:`DUPNModel` inside a possible DistributedDataParallel wrapper."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, DUPNModel):
        raise TypeError(f"expected a DUPNModel (possibly DDP-wrapped), got {type(inner).__name__}")
    return inner


def last_shared_layer(model: nn.Module) -> list[Tensor]:
    """The parameters GradNorm measures task gradients on: the user tower's final projection weight."""
    return [unwrap(model).tower.projection.weight]
