"""The DUPN model: user tower -> universal representation -> multi-task design -> task heads.

Shapes: B = batch size, L = max_len, K = max_tags, F = rank_dim, R = representation_dim.
G = training_set.group_size (impression slots per row).
A batch is a ``dict[str, Tensor]`` with the columns of ``features/training_examples``: one row
per example group, i.e. one user at one instant (user side ``seq_*``, ``user_*``, encoded once;
example side ``query_tokens``, the slot arrays ``item*`` / ``rank_features`` / labels (B, G) of
impression rows, ``talent*`` of follow rows). The tower reads only user-side keys (and
``query_tokens`` if present); each head reads only its own rows and example-side keys.

The universal representation is the user tower's output for every multi-task design;
the designs (:class:`TaskMixer` subclasses) only change what each head reads.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence, cast, overload

import torch
from torch import Tensor, nn

from core.tables import KIND_IDS
from features.encoding import BEHAVIOR_INDEX
from training.losses import TOWER_OUTPUTS
from training.modules import (
    AttentionPooling, FrozenNorm, ItemEmbedding, PropertyEmbedding, PropertyGatedLSTM, QuantilePieces, QuantileRanks,
    RecencyPooling, UserProfile, bag_mean, category_profile, embedding, embedding_bag, interest_match, match_scores,
    mlp, ramps, required_match, valid_mask)
from training.spec import PPP_CLASSES, ModelSpec

if TYPE_CHECKING:
    from core.config import ModelConfig
    from training.baselines import BagTower, CNNMaxTower

logger = logging.getLogger(__name__)

Batch = Mapping[str, Tensor]
USER_KEYS = ("seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_log_price", "seq_behavior",
             "seq_scene", "seq_time_bucket", "seq_len", "user_age", "user_gender", "user_city", "user_dense")
ITEM_KEYS = ("item", "item_shop", "item_brand", "item_category", "item_tags", "item_log_price")


def need(batch: Batch, key: str, user: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"batch lacks '{key}', needed by {user}; batches need the columns of "
                       f"features/training_examples (have {sorted(batch)})")
    return batch[key]


def frozen_norm(spec: ModelSpec, name: str) -> FrozenNorm:
    mean, var = spec.norm[name]
    return FrozenNorm(mean, var)


def item_embedding(spec: ModelSpec) -> ItemEmbedding:
    """The spec's :class:`ItemEmbedding` (its frozen price statistics and category mean prices)."""
    prices = torch.zeros(spec.vocab["category"])
    for index, price in spec.category_log_price.items():
        prices[index] = price
    return ItemEmbedding(spec.vocab, spec.model, {"seq_log_price": frozen_norm(spec, "seq_log_price"),
                                                  "item_log_price": frozen_norm(spec, "item_log_price")},
                         prices, frozen_norm(spec, "rel_log_price"))


# ====================================================================== user tower
BEHAVIOUR_PRICES = tuple(BEHAVIOR_INDEX[b] for b in ("click", "fav", "cart", "buy"))


def behaviour_prices(rel_price: Tensor, behavior: Tensor, valid: Tensor) -> Tensor:
    """Per behaviour type (click, fav, cart, buy): the mean normalised relative price of the user's
    behaviours of that type and log(1 + their count) -> (B, 8). A buy reveals purchasing power far
    better than a click; how many there are says how much to trust each mean."""
    out = []
    for index in BEHAVIOUR_PRICES:
        w = ((behavior == index) & valid).to(rel_price.dtype)
        count = w.sum(dim=1)
        out += [(w * rel_price).sum(dim=1) / count.clamp_min(1.0), torch.log1p(count)]
    return torch.stack(out, dim=1)


def pool_count(m: "ModelConfig") -> int:
    """P: the time-decay pools of a DUPN tower, the purchases' pool (``model.purchase_pool``) included."""
    return m.recency_interests + (1 if m.purchase_pool and m.recency_interests else 0)


def interest_layout(m: "ModelConfig") -> tuple[int, int, int]:
    """Where a DUPN representation holds its interests: (first column, count K + P, width Dk + 1); the
    first ``category_dim`` columns of each interest are in the item categories' space."""
    return m.representation_dim, m.attention_heads + pool_count(m), m.category_dim + m.tag_dim + 1


def price_gaps(prices: Tensor, target: Tensor, log_price: Tensor) -> tuple[Tensor, Tensor]:
    """prices (N, 2T): each behaviour type's (mean normalised relative price, log(1 + count)), as a
    representation holds them; target (N, G) the targets' normalised relative prices, log_price (N, G)
    their log prices -> (N, G, T) twice: target minus each type's mean, and its absolute value (zeros where
    the type has no behaviour or the target no price)."""
    prices = prices.reshape(prices.shape[0], prices.shape[1] // 2, 2)  # (N, T, 2); N may be 0 (no rows for a head)
    known = (prices[..., 1] > 0).to(prices.dtype).unsqueeze(1)  # (N, 1, T)
    priced = (log_price > 0).to(prices.dtype).unsqueeze(-1)  # (N, G, 1)
    gap = (target.unsqueeze(-1) - prices[..., 0].unsqueeze(1)) * known * priced
    return gap, gap.abs()


class UserTower(nn.Module):
    """Behaviour sequence + profile (+ query) -> the universal user representation.

    item/property embeddings -> property-gated LSTM -> K-head attention pooling (query, user,
    properties) -> the pooled states, projected to ``pooled_dim`` -> concat with the profile vector u and
    the mean relative price per behaviour type (:func:`behaviour_prices`; with behaviour properties) ->
    Linear -> ReLU -> the dense part (B, R). Each attention head also pools the behaviours' interest
    keys (category ‖ tag embeddings, :meth:`ItemEmbedding.key`) and their normalised price relative to
    the category: the K **interests** (B, K, Dk + 1) are the second part of the representation, the
    behaviour-type prices (with properties) the third. With ``model.recency_interests`` > 0, P time-decay
    pools (:class:`training.modules.RecencyPooling`; with ``model.purchase_pool`` one more, of the
    purchases alone, so P = recency_interests + 1) add P interests after the
    attention's and the log of their decayed behaviour counts: (B, R + (K + P)·(Dk + 1) + 8 + P)
    in all; with ``model.category_profile`` = C > 0, last, each pool's log decayed count per category
    bucket (:func:`training.modules.category_profile`), P·C more columns. Heads match a target's key against
    the interests (:func:`training.modules.match_scores`), so "how much of this user's (recent,
    bought, queried) behaviour is in the target's category / style" is a dot product in one shared
    space rather than a mapping each head must learn. ``projection`` (the dense part's last layer) is
    the last shared layer.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.model
        self.max_tags = spec.max_tags
        self.property_in_lstm = m.property_in in ("all", "lstm")
        self.property_in_attention = m.property_in in ("all", "attention")
        self.items = item_embedding(spec)
        uses_property = self.property_in_lstm or self.property_in_attention
        self.properties = PropertyEmbedding(spec.vocab, m) if uses_property else None
        property_dim = self.properties.out_dim if self.properties is not None else 0
        self.lstm = PropertyGatedLSTM(self.items.out_dim, property_dim, m.lstm_hidden, self.property_in_lstm)
        self.query = embedding_bag(spec.vocab["query_token"], m.query_dim)
        self.profile = UserProfile(spec.vocab, m, frozen_norm(spec, "user_dense"))
        self.heads = m.attention_heads
        self.attention = AttentionPooling(m.lstm_hidden, property_dim if self.property_in_attention else 0,
                                          m.query_dim, self.profile.out_dim, m.attention_hidden, self.heads)
        self.pool_projection = nn.Linear(self.heads * m.lstm_hidden, m.pooled_dim)
        # the mean price per behaviour type uses the behaviour property: not in DUPN-nobp
        self.behaviour_prices = len(BEHAVIOUR_PRICES) if uses_property else 0
        self.projection = nn.Linear(m.pooled_dim + self.profile.out_dim + 2 * self.behaviour_prices,
                                    m.representation_dim)
        self.dense_dim = m.representation_dim
        self.key_dim = self.items.key_dim
        # each interest: the pooled key (category ‖ tags) and the pooled relative price of its behaviours
        _, _, self.interest_dim = interest_layout(m)
        assert self.interest_dim == self.key_dim + 1
        self.recency_pools = pool_count(m)
        self.recency = RecencyPooling(spec.vocab["time_bucket"], m.recency_interests,
                                      behaviors=spec.vocab["behavior"] if m.recency_by_behavior else 0,
                                      only=(BEHAVIOR_INDEX["buy"],) if m.purchase_pool else (),
                                      behavior_vocab=spec.vocab["behavior"]) \
            if m.recency_interests else None
        self.n_interests = self.heads + self.recency_pools
        self._prices_at = m.representation_dim + self.n_interests * self.interest_dim
        self._activity_at = self._prices_at + 2 * self.behaviour_prices
        # each pool's decayed count per category bucket (training.modules.category_profile)
        self.profile_buckets = m.category_profile if self.recency is not None else 0
        self.out_dim = self._activity_at + self.recency_pools * (1 + self.profile_buckets)
        # what the task mixer reads: all but the category profile, which heads read by the target's category
        self.mixer_dim = self._activity_at + self.recency_pools
        self.price_dim = 2 * self.behaviour_prices + self.n_interests if self.behaviour_prices else 0
        # match features: category and tag cosines of every interest, and for each time-decay pool its
        # category cosine times log(1 + its mass) (decayed activity in the target's category)
        # with the category profile, also each pool's log decayed count in the target's category and that
        # count's share of the pool's mass
        # (with model.profile_top_share, also that count over the pool's count in the user's top category)
        self.profile_top_share = m.profile_top_share and self.profile_buckets > 0
        profile_match = (3 if self.profile_top_share else 2) * self.recency_pools if self.profile_buckets else 0
        # with model.price_match, item targets' price gaps to the behaviour types' mean prices (and their size)
        self.price_match = m.price_match and self.behaviour_prices > 0
        self.match_dim = 2 * self.n_interests + self.recency_pools + profile_match + \
            (2 * self.behaviour_prices if self.price_match else 0)
        self.category_match_dim = self.n_interests + self.recency_pools + profile_match

    def price_features(self, representation: Tensor) -> Tensor:
        """(B, 8 + K + P): the behaviour-type prices and counts, and each interest's mean relative price."""
        return torch.cat([representation[:, self._prices_at:self._prices_at + 2 * self.behaviour_prices],
                          self.interests(representation)[..., -1]], dim=-1)

    def activity(self, representation: Tensor) -> Tensor:
        """(B, P): log(1 + the decayed behaviour count) of each time-decay pool ((B, 0) without pools)."""
        return representation[:, self._activity_at:self._activity_at + self.recency_pools]

    def category_profile(self, representation: Tensor) -> Tensor:
        """(B, P, buckets): each time-decay pool's log(1 + decayed behaviour count) per category bucket
        ((B, P, 0) without the profile)."""
        start = self._activity_at + self.recency_pools
        flat = representation[:, start:start + self.recency_pools * self.profile_buckets]
        return flat.reshape(representation.shape[0], self.recency_pools, self.profile_buckets)

    def interests(self, representation: Tensor) -> Tensor:
        """The K + P interests (B, K + P, Dk + 1) inside a representation: pooled key, then the pooled
        normalised relative price."""
        start = self.dense_dim
        flat = representation[:, start:start + self.n_interests * self.interest_dim]
        return flat.reshape(representation.shape[0], self.n_interests, self.interest_dim)

    def match(self, representation: Tensor, category: Tensor, tags: Tensor | None = None,
              log_price: Tensor | None = None) -> Tensor:
        """User-target match features (N, G, ``match_dim``) of representations (N, ·) and item targets
        (N, G) (+ tags (N, G, K_tags), + log prices (N, G)): the category cosines of the K + P interests,
        their tag cosines (with tags; :func:`training.modules.match_scores`), then the P time-decay pools'
        category cosines times log(1 + their mass), then (with ``model.category_profile``) each pool's
        log(1 + decayed count) in the target's own category and that count's share of the pool's mass
        (and with ``model.profile_top_share`` that count over the pool's count in the user's top category),
        then (with ``model.price_match``) the target's normalised relative price minus the user's mean of
        each behaviour type (click, fav, cart, buy; 0 for a type without behaviours or a target without
        a price) and those gaps' absolute values: how far the target sits from the prices the user takes.
        Without tags (a talent): (N, G, ``category_match_dim``), no tag or price part."""
        if tags is not None and self.price_match and log_price is None:
            raise ValueError("model.price_match: item targets' match features need their log prices")
        keys = self.items.key(category, tags)
        interests = self.interests(representation)[..., :self.key_dim]
        scores = match_scores(interests, keys, self.items.category.embedding_dim)
        if tags is None:
            scores = scores[..., :self.n_interests]  # a zero tag key has no tag match
        mass = self.activity(representation) if self.recency_pools else None
        profile = self.category_profile(representation) if self.profile_buckets else None
        out = interest_match(scores, self.heads, self.n_interests, mass, profile, category, self.profile_top_share)
        if tags is not None and self.price_match:
            assert log_price is not None
            out = torch.cat([out, *self.price_gaps(representation, category, log_price)], dim=-1)
        return out

    def price_gaps(self, representation: Tensor, category: Tensor, log_price: Tensor) -> tuple[Tensor, Tensor]:
        """(N, G, 4) twice: the item targets' normalised relative price minus the user's mean relative price
        of each behaviour type, and its absolute value (zeros where either is unknown)."""
        prices = representation[:, self._prices_at:self._prices_at + 2 * self.behaviour_prices]
        return price_gaps(prices, self.items.relative_price(log_price, category), log_price)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Representation of each row's user.

        Args:
            batch: user-side keys (``USER_KEYS``); ``query_tokens`` (B, Q) optional
                (absent or all-zero = no query, as at serving).

        Returns:
            ``representation`` (B, R + K·Dk), ``attention`` (B, L) weights (the mean of the heads),
            ``pooled`` (B, pooled_dim), ``query`` (B, Dq).
        """
        who = "the user tower"
        seq_item = need(batch, "seq_item", who)
        b, seq_l = seq_item.shape
        tags = need(batch, "seq_tags", who)
        if tags.shape[-1] != seq_l * self.max_tags:
            raise ValueError(f"seq_tags has {tags.shape[-1]} columns, expected max_len * max_tags = "
                             f"{seq_l} * {self.max_tags}; the spec does not match the data")
        seq_len = need(batch, "seq_len", who)
        # Right padding: steps after the longest sequence of the batch affect nothing; skip them.
        n = max(1, min(seq_l, int(seq_len.max()))) if b else seq_l

        def seq(key: str) -> Tensor:
            return need(batch, key, who)[:, :n]

        seq_tags = tags.reshape(b, seq_l, self.max_tags)[:, :n]
        x = self.items(seq("seq_item"), seq("seq_shop"), seq("seq_brand"), seq("seq_category"), seq_tags,
                       seq("seq_log_price"), "seq_log_price")
        p = None
        if self.properties is not None:
            p = self.properties(seq("seq_behavior"), seq("seq_scene"), seq("seq_time_bucket"))
        states = self.lstm(x, p if self.property_in_lstm else None)
        u = self.profile(need(batch, "user_age", who), need(batch, "user_gender", who),
                         need(batch, "user_city", who), need(batch, "user_dense", who))
        if "query_tokens" in batch:
            q = bag_mean(self.query, batch["query_tokens"])
        else:
            q = u.new_zeros(b, self.query.embedding_dim)
        pooled, weights = self.attention(states, seq_len, q, u, p if self.property_in_attention else None)
        keys = torch.cat([self.items.key(seq("seq_category"), seq_tags), x[..., -1:]], dim=-1)  # + relative price
        interests = torch.bmm(weights, keys)  # (B, K, Dk + 1)
        masses = []
        if self.recency is not None:
            w = self.recency.weights(seq("seq_time_bucket"), valid_mask(seq_len, n), seq("seq_behavior"))
            recent, mass = self.recency(keys, seq("seq_time_bucket"), valid_mask(seq_len, n), seq("seq_behavior"), w)
            interests = torch.cat([interests, recent], dim=1)  # (B, K + P, Dk + 1)
            masses = [mass]
            if self.profile_buckets:
                masses.append(category_profile(w, seq("seq_category"), self.profile_buckets).reshape(b, -1))
        pooled = self.pool_projection(pooled.reshape(b, -1))
        parts = [pooled, u]
        prices = []
        if self.behaviour_prices:
            prices = [behaviour_prices(x[..., -1], seq("seq_behavior"), valid_mask(seq_len, n))]
        dense = torch.relu(self.projection(torch.cat(parts + prices, dim=-1)))
        attention = weights.mean(dim=1)
        if n < seq_l:
            attention = torch.nn.functional.pad(attention, (0, seq_l - n))
        representation = torch.cat([dense, interests.reshape(b, -1), *prices, *masses], dim=-1)
        return {"representation": representation, "attention": attention, "pooled": pooled, "query": q}


# ====================================================================== multi-task designs
class GateStats:
    """Mean gate weight per expert of every gate of a mixture-of-experts design, over the batches seen
    while attached (``mixer.gate_stats = GateStats()``): the expert utilisation."""

    COLLAPSE = 0.9  # a gate whose mean weight on one expert exceeds this has collapsed onto it

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, weights: Tensor) -> None:
        w = weights.detach().double().sum(0)
        self.sums[name] = self.sums[name] + w if name in self.sums else w
        self.counts[name] = self.counts.get(name, 0) + int(weights.shape[0])

    def result(self) -> dict[str, list[float]]:
        """gate name -> mean weight of each expert."""
        return {k: (v / max(self.counts[k], 1)).tolist() for k, v in self.sums.items()}

    def collapsed(self) -> list[str]:
        """Gates whose mean weight on a single expert exceeds :attr:`COLLAPSE`."""
        return [k for k, v in self.result().items() if max(v) > self.COLLAPSE]


class TaskMixer(nn.Module):
    """Turns the representation (B, R) into one input vector (B, out_dim) per head."""

    out_dim: int

    def __init__(self, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.heads = heads
        self.gate_stats: GateStats | None = None

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        """representation: (B, R). Returns head name -> (B, out_dim)."""
        raise NotImplementedError


def attach_gate_stats(model: nn.Module, stats: "GateStats | None") -> None:
    """Record (or stop recording, with None) the gate weights of every mixture-of-experts part of ``model``."""
    for module in model.modules():
        if hasattr(module, "gate_stats"):
            # the modules with gate_stats: TaskMixer (MMoE, PLE, ...) and ExtractionLayer
            cast("TaskMixer | ExtractionLayer", module).gate_stats = stats


class SharedBottom(TaskMixer):
    """Every head reads the representation itself (DUPN)."""

    def __init__(self, in_dim: int, heads: tuple[str, ...]) -> None:
        super().__init__(heads)
        self.out_dim = in_dim

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        return {h: representation for h in self.heads}


def _experts(n: int, in_dim: int, out_dim: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU()) for _ in range(n))


def _gated(gate: nn.Module, x: Tensor, experts: Tensor, stats: GateStats | None = None, name: str = "") -> Tensor:
    """softmax(gate(x)) (B, E) weighted sum of experts (B, E, D) -> (B, D)."""
    weights = torch.softmax(gate(x), dim=-1)
    if stats is not None:
        stats.add(name, weights)
    return torch.einsum("be,bed->bd", weights, experts)


class MMoE(TaskMixer):
    """Multi-gate mixture of experts (Ma et al., KDD 2018): shared experts, one softmax gate per head."""

    def __init__(self, in_dim: int, heads: tuple[str, ...], num_experts: int, expert_dim: int) -> None:
        super().__init__(heads)
        self.experts = _experts(num_experts, in_dim, expert_dim)
        self.gates = nn.ModuleDict({h: nn.Linear(in_dim, num_experts) for h in heads})
        self.out_dim = expert_dim

    def forward(self, representation: Tensor) -> dict[str, Tensor]:
        experts = torch.stack([e(representation) for e in self.experts], dim=1)
        return {h: _gated(self.gates[h], representation, experts, self.gate_stats, f"gate_{h}") for h in self.heads}


class ExtractionLayer(nn.Module):
    """One customized-gate-control level of PLE (Tang et al., RecSys 2020).

    Shared experts plus ``num_task_experts`` per head; each head's gate mixes its own and the
    shared experts; with ``shared_gate`` a gate over all experts produces the next level's
    shared input.
    """

    def __init__(self, in_dim: int, heads: tuple[str, ...], num_shared: int, num_task: int, expert_dim: int,
                 shared_gate: bool, name: str = "") -> None:
        super().__init__()
        self.heads = heads
        self.name = name
        self.gate_stats: GateStats | None = None
        self.shared = _experts(num_shared, in_dim, expert_dim)
        self.task = nn.ModuleDict({h: _experts(num_task, in_dim, expert_dim) for h in heads})
        self.gates = nn.ModuleDict({h: nn.Linear(in_dim, num_task + num_shared) for h in heads})
        self.shared_gate = nn.Linear(in_dim, num_shared + num_task * len(heads)) if shared_gate else None

    def forward(self, task_in: Mapping[str, Tensor], shared_in: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """task_in: head -> (B, D_in); shared_in: (B, D_in). Returns head -> (B, D), shared (B, D) or None."""
        shared = [e(shared_in) for e in self.shared]
        own = {h: [e(task_in[h]) for e in cast(nn.ModuleList, self.task[h])] for h in self.heads}
        stats = self.gate_stats
        out = {h: _gated(self.gates[h], task_in[h], torch.stack(own[h] + shared, dim=1), stats,
                         f"{self.name}gate_{h}") for h in self.heads}
        next_shared = None
        if self.shared_gate is not None:
            every = shared + [x for h in self.heads for x in own[h]]
            next_shared = _gated(self.shared_gate, shared_in, torch.stack(every, dim=1), stats,
                                 f"{self.name}gate_shared")
        return out, next_shared


class PLE(TaskMixer):
    """Progressive layered extraction: ``levels`` stacked extraction layers (1 level = CGC)."""

    def __init__(self, in_dim: int, heads: tuple[str, ...], levels: int, num_shared: int, num_task: int,
                 expert_dim: int) -> None:
        super().__init__(heads)
        self.levels = nn.ModuleList(
            ExtractionLayer(in_dim if i == 0 else expert_dim, heads, num_shared, num_task, expert_dim,
                            shared_gate=i < levels - 1, name=f"level{i + 1}_" if levels > 1 else "")
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
    """CTR (or ESMM's CVR) of every impression slot of a row:
    MLP(task input ‖ item ‖ (P·task input) ⊙ item ‖ normalised rank features ‖ q ‖ (Q·q) ⊙ item) -> logit.

    The element-wise products hand the MLP the user-item and query-item matches directly (an MLP
    alone approximates products poorly). The ranking features (position, text relevance,
    quality, ...) and the query are known when an impression is shown, so the head reads them too
    (``model.rank_features_in_ctr``, ``model.query_in_heads``; q is zero without a query).

    Shapes: N rows, G slots, D task input, Di item vector, F rank features, Dq query vector.
    """

    def __init__(self, in_dim: int, item_dim: int, hidden: int, dropout: float,
                 rank_norm: FrozenNorm | None, query_dim: int = 0, match_dim: int = 0) -> None:
        super().__init__()
        self.interact = nn.Linear(in_dim, item_dim)
        self.rank_norm = rank_norm
        self.query_interact = nn.Linear(query_dim, item_dim) if query_dim else None
        self.match_dim = match_dim
        rank_dim = rank_norm.dim if rank_norm is not None else 0
        width = in_dim + 2 * item_dim + rank_dim + (query_dim + item_dim if query_dim else 0) + match_dim
        self.mlp = mlp(width, [hidden], 1, dropout)

    def forward(self, task_in: Tensor, item: Tensor, rank_features: Tensor | None = None,
                query: Tensor | None = None, match: Tensor | None = None) -> Tensor:
        """task_in (N, D), item (N, G, Di), rank_features (N, G, F), query (N, Dq), match (N, G, M)
        -> logits (N, G)."""
        g = item.shape[1]
        parts = [task_in.unsqueeze(1).expand(-1, g, -1), item, self.interact(task_in).unsqueeze(1) * item]
        if self.match_dim:
            parts.append(required_match(match, "(N, G, M)"))
        if self.rank_norm is not None:
            if rank_features is None:
                raise ValueError("this head reads rank_features; pass them (N, G, F)")
            parts.append(self.rank_norm(rank_features.float()))
        if self.query_interact is not None:
            if query is None:
                query = task_in.new_zeros(task_in.shape[0], self.query_interact.in_features)
            parts += [query.unsqueeze(1).expand(-1, g, -1), self.query_interact(query).unsqueeze(1) * item]
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


class L2RHead(nn.Module):
    """The paper's learning-to-rank head: two layers turn the task input (and the query vector, with
    ``model.query_in_heads``) into a weight per rank feature and an offset; the score is
    ``<weights, normalised rank_features> + offset``.

    The offset is the same for every item of one list (one user at one instant), so it never
    changes a ranking; the pointwise logistic loss needs it, or the weights of features whose
    mean differs from zero in the training lists would absorb the base rate.
    """

    def __init__(self, in_dim: int, rank_dim: int, hidden: int, dropout: float, rank_norm: FrozenNorm,
                 query_dim: int = 0, match_dim: int = 0, item_dim: int = 0) -> None:
        super().__init__()
        self.rank_dim = rank_dim
        self.query_dim = query_dim
        self.match_dim = match_dim
        self.weights = mlp(in_dim + query_dim, [hidden], rank_dim + match_dim + 1, dropout)
        self.rank_norm = rank_norm
        # with item_dim: plus an :class:`ItemHead` score of the user-item match (``model.l2r_item_score``)
        self.item_score = ItemHead(in_dim, item_dim, hidden, dropout, rank_norm, query_dim, match_dim) \
            if item_dim else None

    def forward(self, task_in: Tensor, rank_features: Tensor, query: Tensor | None = None,
                match: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """task_in (N, D), rank_features (N, G, F), query (N, Dq), match (N, G, M), items (N, G, Di)
        -> scores (N, G).

        The user-target match features (when the head reads them) are ranking features too: each
        gets a user-dependent weight like the given ones."""
        extra = None
        if self.item_score is not None:
            if items is None:
                raise ValueError("this L2R head also scores the items; pass items (N, G, Di)")
            extra = self.item_score(task_in, items, rank_features, query, match)
        if self.query_dim:
            if query is None:
                query = task_in.new_zeros(task_in.shape[0], self.query_dim)
            task_in = torch.cat([task_in, query], dim=-1)
        out = self.weights(task_in)
        w, offset = out[:, :-1], out[:, -1]
        features = self.rank_norm(rank_features.float())
        if self.match_dim:
            features = torch.cat([features, required_match(match, "(N, G, M)")], dim=-1)
        score = (w.unsqueeze(1) * features).sum(dim=-1) + offset.unsqueeze(1)
        return score if extra is None else score + extra


class FollowHead(nn.Module):
    """Talent follow: MLP(task input ‖ t ‖ (P·task input) ⊙ t) -> logit, with t = talent embedding ‖
    talent-category embedding. The category table is the item categories' own (a talent's category
    and an item's share one index space, ``features/encoding.py``), so the user's history in the
    talent's category is a direct match. ``talent_dim`` 0: t is the category embedding alone (no talent id)."""

    def __init__(self, in_dim: int, n_talent: int, talent_dim: int, category: nn.Embedding, hidden: int,
                 dropout: float, match_dim: int = 0, task_input: bool = True, stopped: bool = False) -> None:
        super().__init__()
        self.talent = embedding(n_talent, talent_dim) if talent_dim else None
        self.category = category
        # stopped: the category table (the tower's) gets no gradient from this head (model.side_detached)
        self.stopped = stopped
        width = talent_dim + category.embedding_dim
        # without the task input (model.follow_task_input false) the head reads t and the match features only
        self.interact = nn.Linear(in_dim, width) if task_input else None
        self.match_dim = match_dim
        self.mlp = mlp((in_dim + 2 * width if task_input else width) + match_dim, [hidden], 1, dropout)

    def forward(self, task_in: Tensor, talent: Tensor, talent_category: Tensor, match: Tensor | None = None) \
            -> Tensor:
        """task_in (N, D), talent (N,), talent_category (N,), match (N, M) -> logit (N,)."""
        t = self.category(talent_category)
        t = t.detach() if self.stopped else t
        if self.talent is not None:
            t = torch.cat([self.talent(talent), t], dim=-1)
        parts = [task_in, t, self.interact(task_in) * t] if self.interact is not None else [t]
        if self.match_dim:
            parts.append(required_match(match, "(N, M)"))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


class PPPHead(nn.Module):
    """Purchasing-power prediction: 7 tier logits (B, 7).

    ``Linear(Dropout(task input))`` (the paper's softmax) plus, when the tower gives them, an MLP over
    the representation's price features (the mean relative price and count per behaviour type, and
    each interest's mean relative price; :meth:`UserTower.price_features`). The tier is a non-linear
    function of the prices a user pays per behaviour type (a few buys say more than many clicks, and a
    mean over no buy says nothing), which one small hidden layer over those few inputs learns from the
    ~17k labels of the demo world, where a linear softmax over the whole representation over-fits.
    """

    def __init__(self, in_dim: int, dropout: float, hidden: int = 0, price_dim: int = 0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, PPP_CLASSES)
        self.price_dim = price_dim
        self.prices = mlp(price_dim, [hidden], PPP_CLASSES, 0.0) if price_dim and hidden else None

    def forward(self, task_in: Tensor, prices: Tensor | None = None) -> Tensor:
        """task_in (B, D), prices (B, P) -> logits (B, 7)."""
        logits = self.linear(self.dropout(task_in))
        if self.prices is not None:
            if prices is None:
                raise ValueError("this tier head reads the price features; pass prices (B, P)")
            logits = logits + self.prices(prices)
        return logits


# ====================================================================== target priors
ITEM_PRIOR_DIM = 3     # has a query, the share of its earlier searches in the item's category, its log
FOLLOW_PRIOR_DIM = 4   # log counts and log rates of the talent's and the user's earlier follow impressions
# model.prior_pieces: the priors as piecewise-linear pieces at fixed knots instead of logs. A head's MLP did
# not learn the follow rate's effect from one scalar per prior; with pieces, one linear layer is any
# piecewise-linear function of it (docs/learning.md, "The follow gap is the priors' encoding"). Counts
# get knots on a log-like scale up to a million, rates and shares (smoothed, in (0, 1]) knots denser
# below 0.3.
PRIOR_COUNT_KNOTS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 1e4, 1e5, 1e6)
PRIOR_RATE_KNOTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0)
# the knots of each talent_prior column, in features.priors.TALENT_PRIOR's order (a count, then its rate)
FOLLOW_PRIOR_KNOTS = (PRIOR_COUNT_KNOTS, PRIOR_RATE_KNOTS, PRIOR_COUNT_KNOTS, PRIOR_RATE_KNOTS)


def item_prior_dim(pieces: bool) -> int:
    """Width of :func:`item_priors` (``model.prior_pieces``)."""
    return 1 + len(PRIOR_RATE_KNOTS) - 1 if pieces else ITEM_PRIOR_DIM


def follow_prior_dim(pieces: bool) -> int:
    """Width of :func:`follow_priors` (``model.prior_pieces``)."""
    return sum(len(k) - 1 for k in FOLLOW_PRIOR_KNOTS) if pieces else FOLLOW_PRIOR_DIM


def fixed_pieces(x: Tensor, knots: Sequence[float]) -> Tensor:
    """x (...) -> (..., len(knots) - 1): piece i is clamp((x - k_i) / (k_(i+1) - k_i), 0, 1), so a linear
    layer on the pieces is any piecewise-linear function of x with these knots (constant beyond them)."""
    k = torch.as_tensor(knots, dtype=x.dtype, device=x.device)
    return ramps(x.unsqueeze(-1), k[:-1], k[1:] - k[:-1])


def item_priors(batch: Batch, rows: Tensor, pieces: bool = False) -> Tensor:
    """(N, G, P) earlier-days statistics of the impression slots of ``rows`` (``model.target_priors``):
    whether the list has a query, and the smoothed share of that query's earlier searches in the slot
    item's category (``item_query_share``, :mod:`features.priors`): the share and its log, or with ``pieces``
    the share's pieces at :data:`PRIOR_RATE_KNOTS`; all 0 without a query."""
    share = slot_view(batch, "item_query_share", rows).float()
    has_query = (need(batch, "query_tokens", "the item heads' priors").index_select(0, rows)[:, :1] != 0) \
        .to(share.dtype).expand_as(share)
    if pieces:
        return torch.cat([has_query.unsqueeze(-1), fixed_pieces(share, PRIOR_RATE_KNOTS) * has_query.unsqueeze(-1)],
                         dim=-1)
    log_share = torch.log(share.clamp_min(1e-4)) / 5.0
    return torch.stack([has_query, share * has_query, log_share * has_query], dim=-1)


def follow_priors(batch: Batch, rows: Tensor, pieces: bool = False) -> Tensor:
    """(N, P) earlier-days statistics of follow rows ``rows`` (``talent_prior``, :data:`features.priors.TALENT_PRIOR`:
    the talent's follow impressions and rate, the user's): log1p of the counts / 4 and log of the rates / 3,
    or with ``pieces`` each column's pieces at its :data:`FOLLOW_PRIOR_KNOTS`."""
    prior = need(batch, "talent_prior", "the follow head's priors").index_select(0, rows).float()
    if pieces:
        return torch.cat([fixed_pieces(prior[:, j], knots) for j, knots in enumerate(FOLLOW_PRIOR_KNOTS)], dim=-1)
    counts, rates = torch.log1p(prior[:, 0::2]) / 4.0, torch.log(prior[:, 1::2].clamp_min(1e-4)) / 3.0
    return torch.stack([counts, rates], dim=-1).flatten(1)  # back to the columns' order


def with_priors(match: Tensor | None, priors: Tensor | None) -> Tensor | None:
    """The heads' extra inputs: match features, then prior statistics (either may be absent)."""
    if priors is None:
        return match
    return priors if match is None else torch.cat([match, priors], dim=-1)


# ====================================================================== the model
@overload
def _cut(x: Tensor, stop: bool) -> Tensor: ...


@overload
def _cut(x: None, stop: bool) -> None: ...


def _cut(x: Tensor | None, stop: bool) -> Tensor | None:
    """``x`` without its gradient when ``stop`` (a side head's input from the tower, model.side_detached)."""
    return x.detach() if stop and x is not None else x


def rows_of_kind(batch: Batch, kind: str) -> Tensor:
    """(N,) int64 indices of the batch rows of one kind (``impressions`` rows: those with items)."""
    if kind == "impressions":
        return torch.nonzero(need(batch, "n_items", "the item heads") > 0).squeeze(1)
    return torch.nonzero(need(batch, "kind_id", "the heads") == KIND_IDS[kind]).squeeze(1)


def scatter_rows(values: Tensor, rows: Tensor, n: int) -> Tensor:
    """values (N, ...) of rows ``rows`` -> (n, ...) with zeros elsewhere (differentiable)."""
    return values.new_zeros((n, *values.shape[1:])).index_copy(0, rows, values)


def slot_view(batch: Batch, key: str, rows: Tensor, width: int | None = None) -> Tensor:
    """Slot column ``key`` of ``rows``: (N, G), or (N, G, width) for the flattened per-slot arrays."""
    x = need(batch, key, "the item heads").index_select(0, rows)
    return x if width is None else x.reshape(x.shape[0], x.shape[1] // width, width)


class TaskModel(nn.Module):
    """What every multi-task model of the platform is: ``forward(batch)`` gives ``representation``
    (B, R) and, per enabled task, ``ctr_logit`` / ``cvr_logit`` (B, G) on impression rows (zeros on
    the others), ``l2r_score`` (B, G), ``follow_logit`` (B,), ``ppp_logits`` (B, 7); ``user_part()`` is
    the nightly half; ``shared_parameters()`` the last shared layer (GradNorm)."""

    spec: ModelSpec

    @property
    def embedding_dim(self) -> int:
        """Length of the representation ``user_part()`` publishes."""
        raise NotImplementedError

    def user_part(self) -> nn.Module:
        raise NotImplementedError

    def shared_parameters(self) -> list[Tensor]:
        raise NotImplementedError


class DUPNModel(TaskModel):
    """DUPN: a user tower (:class:`UserTower`, or another sequence encoder with the same outputs),
    a :class:`TaskMixer` and one head per enabled task.

    ``forward(batch)`` returns the tower outputs (``representation``, ``attention``, ``pooled``) and,
    per enabled task, ``ctr_logit`` (+ ``cvr_logit`` under ESMM) and ``l2r_score`` (B, G), computed
    on the rows that hold impressions only; ``follow_logit`` (B,) on follow rows; ``ppp_logits``
    (B, 7). Values of rows of another kind are zeros.
    """

    # the towers of the platform (the baselines' give UserTower's outputs but have no interests)
    tower: UserTower | BagTower | CNNMaxTower

    def __init__(self, spec: ModelSpec, tower: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        m = spec.model
        self.tower = cast("UserTower | BagTower | CNNMaxTower", tower) if tower is not None else UserTower(spec)
        # the mixer reads the representation's leading ``mixer_in`` columns (all but a UserTower's profile)
        self.mixer_in = int(getattr(self.tower, "mixer_dim", self.tower.out_dim))
        self.mixer = build_mixer(spec, self.mixer_in)
        d, item_dim = self.mixer.out_dim, self.tower.items.out_dim
        qd = m.query_dim if m.query_in_heads else 0
        # the user-target match features need a tower with interests (DUPN's)
        self.matches = m.match_features and hasattr(self.tower, "match")
        k2 = cast(UserTower, self.tower).match_dim if self.matches else 0
        k1 = cast(UserTower, self.tower).category_match_dim if self.matches else 0
        # the target priors enter each head beside the match features
        self.priors, self.prior_pieces = m.target_priors, m.prior_pieces
        item_p, follow_p = (item_prior_dim(m.prior_pieces), follow_prior_dim(m.prior_pieces)) if self.priors else (0, 0)
        # and so do hand-crafted side inputs (model.side_inputs): raw values of features/hybrid_examples ranked
        # at the spec's knots (the hybrid model), or ranks training/side_inputs.py attaches (the comparison's)
        self.side = QuantilePieces(m.side_inputs, m.side_bins) if m.side_inputs else None
        self.side_ranks = QuantileRanks(spec.side_knots) if spec.reads_side else None
        side = self.side.out_dim if self.side is not None else 0
        # model.side_detached: the side heads read the tower's outputs with their gradient stopped, and heads
        # without side inputs (built first, as a model without side inputs builds its heads) train the tower
        # and they read the priors as logs, whatever model.prior_pieces says: their heads are DUPN-all's, pieces or not
        # (spec.tower_log_priors; as the side heads read them in the specs of models registered before it existed)
        self.tower_pieces = self.prior_pieces and not spec.tower_log_priors
        self.tower_heads: nn.ModuleDict | None = None
        if side and m.side_detached:
            if m.family != "dupn":
                raise ValueError(f"training.model.side_detached needs model.family dupn, not {m.family}")
            tower_item, tower_follow = (item_prior_dim(self.tower_pieces), follow_prior_dim(self.tower_pieces)) \
                if self.priors else (0, 0)
            plain = self._build_heads(spec.head_names, d, item_dim, qd, k2 + tower_item, k1 + tower_follow)
            heads = self._build_heads([n for n in spec.head_names if n != "ppp"], d, item_dim, qd,
                                      k2 + item_p + side, k1 + follow_p + side, stopped=True)
            if "ppp" in plain:
                heads["ppp"] = plain.pop("ppp")
            self.tower_heads = nn.ModuleDict(plain)
        else:
            heads = self._build_heads(spec.head_names, d, item_dim, qd, k2 + item_p + side, k1 + follow_p + side)
        self.heads = nn.ModuleDict(heads)
        logger.debug("built %s model (%s, property_in=%s, heads %s): %d parameters", m.family, m.architecture,
                     m.property_in, list(heads), sum(p.numel() for p in self.parameters()))

    def _build_heads(self, names: Sequence[str], d: int, item_dim: int, qd: int, k2: int, k1: int,
                     stopped: bool = False) -> dict[str, nn.Module]:
        """One head per task of ``names``: task input width ``d``, item vector ``item_dim``, query ``qd``,
        extra inputs (match features, priors, side inputs) ``k2`` per impression slot and ``k1`` per follow row;
        ``stopped``: heads whose inputs from the tower carry no gradient (the follow head's category table too)."""
        spec, m = self.spec, self.spec.model
        heads: dict[str, nn.Module] = {}
        for name in names:
            if name in ("ctr", "cvr"):
                heads[name] = ItemHead(d, item_dim, m.head_hidden, m.dropout,
                                       frozen_norm(spec, "rank_features") if m.rank_features_in_ctr else None, qd, k2)
            elif name == "l2r":
                heads[name] = L2RHead(d, spec.rank_dim, m.head_hidden, m.dropout, frozen_norm(spec, "rank_features"),
                                      qd, k2, item_dim if m.l2r_item_score else 0)
            elif name == "follow":
                heads[name] = FollowHead(d, spec.vocab["talent"], m.talent_dim, self.tower.items.category,
                                         m.head_hidden, m.dropout, k1, m.follow_task_input, stopped)
            elif name == "ppp":
                price_dim = getattr(self.tower, "price_dim", 0)
                heads[name] = PPPHead(d, m.dropout, m.ppp_hidden, price_dim)
        return heads

    def target_items(self, batch: Batch, rows: Tensor) -> Tensor:
        """Target item vectors (N, G, Di) of impression rows ``rows`` (the shared ItemEmbedding)."""
        k = self.spec.max_tags
        return self.tower.items(slot_view(batch, "item", rows), slot_view(batch, "item_shop", rows),
                                slot_view(batch, "item_brand", rows), slot_view(batch, "item_category", rows),
                                slot_view(batch, "item_tags", rows, k), slot_view(batch, "item_log_price", rows),
                                "item_log_price")

    def head_sets(self) -> list[tuple[nn.ModuleDict, str, bool, bool, bool]]:
        """(heads, output key prefix, whether they read the side inputs, whether their inputs from the tower
        are cut from its gradient, whether they read the priors as pieces) of every set of item and follow
        heads. One set, unless ``model.side_detached``: then the heads without side inputs, whose outputs are
        prefixed with :data:`TOWER_OUTPUTS` and whose losses train the tower
        (:func:`training.losses.task_losses`), built and fed as a model without side inputs and with the
        priors as logs builds and feeds its heads, and the side heads on the tower's outputs with their
        gradient stopped, which give the outputs. The heads without side inputs only train: out of training
        mode (scoring, serving) they do not run."""
        if self.tower_heads is not None:
            side = (self.heads, "", True, True, self.prior_pieces)
            tower = (self.tower_heads, TOWER_OUTPUTS, False, False, self.tower_pieces)
            return [tower, side] if self.training else [side]
        return [(self.heads, "", self.side is not None, False, self.prior_pieces)]

    def heads_forward(self, task_in: Mapping[str, Tensor], batch: Batch, query: Tensor | None = None,
                      representation: Tensor | None = None) -> dict[str, Tensor]:
        """Outputs of every head from the per-head inputs (B, D), the query vector (B, Dq), the
        representation (B, ·; its interests give the match features) and the example-side keys."""
        out: dict[str, Tensor] = {}
        n = next(iter(task_in.values())).shape[0]
        if self.matches and representation is None:
            raise ValueError("this model's heads read match features: pass the representation")
        sets = self.head_sets()
        if "ctr" in self.heads or "l2r" in self.heads:
            rows = rows_of_kind(batch, "impressions")
            rank = slot_view(batch, "rank_features", rows, self.spec.rank_dim)
            q = query.index_select(0, rows) if query is not None else None
            match = None
            if self.matches:
                assert representation is not None
                tower = cast(UserTower, self.tower)  # only a tower with interests (DUPN's) gives match features
                match = tower.match(representation.index_select(0, rows), slot_view(batch, "item_category", rows),
                                    slot_view(batch, "item_tags", rows, self.spec.max_tags),
                                    slot_view(batch, "item_log_price", rows))
            side = self.side(self.side_rank(slot_view(batch, "slot_side", rows, self.side.columns))) \
                if self.side is not None else None
            l2r_items = "l2r" in self.heads and getattr(self.heads["l2r"], "item_score", None) is not None
            items = self.target_items(batch, rows) if "ctr" in self.heads or l2r_items else None
            for heads, prefix, reads_side, stop, pieces in sets:
                priors = item_priors(batch, rows, pieces) if self.priors else None
                extra = with_priors(with_priors(_cut(match, stop), priors), side if reads_side else None)
                head_items, head_q = _cut(items, stop), _cut(q, stop)
                if "ctr" in heads:
                    for head, key in (("ctr", "ctr_logit"), ("cvr", "cvr_logit")):
                        if head in heads:
                            logits = heads[head](_cut(task_in[head], stop).index_select(0, rows), head_items, rank,
                                                 head_q, extra)
                            out[prefix + key] = scatter_rows(logits, rows, n)
                if "l2r" in heads:
                    scores = heads["l2r"](_cut(task_in["l2r"], stop).index_select(0, rows), rank, head_q, extra,
                                          head_items if l2r_items else None)
                    out[prefix + "l2r_score"] = scatter_rows(scores, rows, n)
        if "follow" in self.heads:
            rows = rows_of_kind(batch, "follow")
            category = need(batch, "talent_category", "the follow head").index_select(0, rows)
            match = None
            if self.matches:
                assert representation is not None
                tower = cast(UserTower, self.tower)  # only a tower with interests (DUPN's) gives match features
                match = tower.match(representation.index_select(0, rows), category.unsqueeze(1))[:, 0]
            side = self.side(self.side_rank(need(batch, "row_side", "the follow head's side inputs")
                                            .index_select(0, rows))) if self.side is not None else None
            talent = need(batch, "talent", "the follow head").index_select(0, rows)
            for heads, prefix, reads_side, stop, pieces in sets:
                priors = follow_priors(batch, rows, pieces) if self.priors else None
                extra = with_priors(with_priors(_cut(match, stop), priors), side if reads_side else None)
                logit = heads["follow"](_cut(task_in["follow"], stop).index_select(0, rows), talent, category, extra)
                out[prefix + "follow_logit"] = scatter_rows(logit, rows, n)
        if "ppp" in self.heads:
            prices = None
            if getattr(self.heads["ppp"], "prices", None) is not None:
                assert representation is not None
                # a tier head with price features exists only over a tower with them (DUPN's)
                prices = cast(UserTower, self.tower).price_features(representation)
            out["ppp_logits"] = self.heads["ppp"](task_in["ppp"], prices)
        return out

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """batch: a training-examples batch. Returns the tower outputs and every head's output."""
        out = self.tower(batch)
        rep = out["representation"]
        out.update(self.heads_forward(self.mixer(rep[:, :self.mixer_in]), batch, out.get("query"), rep))
        return out

    @property
    def embedding_dim(self) -> int:
        return int(self.tower.out_dim)

    def side_rank(self, side: Tensor) -> Tensor:
        """Side inputs of a batch as quantile ranks: ranked here when the spec holds the knots, else as given."""
        return self.side_ranks(side) if self.side_ranks is not None else side.float()

    def user_part(self) -> "UserPart":
        """The serving half that needs only user-side keys (shares this model's parameters)."""
        return UserPart(self)

    def shared_parameters(self) -> list[Tensor]:
        """The user tower's final projection weight (the last layer every task shares)."""
        return [self.tower.projection.weight]

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
        self.mixer, self.mixer_in = model.mixer, model.mixer_in
        self.ppp = model.heads["ppp"] if "ppp" in model.heads else None

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        user_batch = {k: v for k, v in batch.items() if k != "query_tokens"}
        representation = self.tower(user_batch)["representation"]
        if self.ppp is None:
            probs = representation.new_full((representation.shape[0], PPP_CLASSES), 1.0 / PPP_CLASSES)
        else:
            # a tier head with price features exists only over a tower with them (DUPN's)
            prices = cast(UserTower, self.tower).price_features(representation) \
                if getattr(self.ppp, "prices", None) is not None else None
            probs = torch.softmax(self.ppp(self.mixer(representation[:, :self.mixer_in])["ppp"], prices), dim=-1)
        return representation, probs


class ItemScorer(nn.Module):
    """``forward(representation (B, R), item batch) -> CTR probability (B,)`` without the user tower.

    Reads one candidate per row: ``item``, ``item_shop``, ``item_brand``, ``item_category`` (B,),
    ``item_tags`` (B, K), ``item_log_price`` (B,) and ``rank_features`` (B, F) when the head reads
    them. The CTR head's input is computed from the representation through the multi-task design,
    as in training, and the sampling offset is applied.
    """

    def __init__(self, model: DUPNModel) -> None:
        super().__init__()
        if "ctr" not in model.heads:
            raise ValueError(f"scoring items needs the ctr task; this model has heads {list(model.heads)}")
        if model.side is not None:
            raise ValueError(f"scoring items alone cannot give the CTR head its {model.side.columns} side inputs "
                             f"(model.side_inputs); score example groups through the model instead")
        self.tower = model.tower
        self.items = model.tower.items
        self.mixer, self.mixer_in = model.mixer, model.mixer_in
        self.ctr = model.heads["ctr"]
        self.matches = model.matches
        self.priors = model.priors
        self.prior_dim = item_prior_dim(model.prior_pieces)
        self.max_tags = model.spec.max_tags
        self.offset = model.spec.offset("ctr")

    def forward(self, representation: Tensor, batch: Batch) -> Tensor:
        who = "item scoring"
        items = self.items(need(batch, "item", who), need(batch, "item_shop", who),
                           need(batch, "item_brand", who), need(batch, "item_category", who),
                           need(batch, "item_tags", who), need(batch, "item_log_price", who), "item_log_price")
        if representation.shape[0] != items.shape[0]:
            raise ValueError(f"{representation.shape[0]} representations for {items.shape[0]} items; "
                             "repeat each representation once per candidate")
        rank = batch.get("rank_features")
        match = None
        if self.matches:
            tags = need(batch, "item_tags", who)
            tower = cast(UserTower, self.tower)  # only a tower with interests (DUPN's) gives match features
            match = tower.match(representation, batch["item_category"].unsqueeze(1),
                                tags.reshape(tags.shape[0], 1, -1), batch["item_log_price"].unsqueeze(1))
        if self.priors:  # no query when scoring candidates: the query statistics are absent (zeros)
            match = with_priors(match, items.new_zeros(items.shape[0], 1, self.prior_dim))
        logit = self.ctr(self.mixer(representation[:, :self.mixer_in])["ctr"], items.unsqueeze(1),
                         None if rank is None else rank.unsqueeze(1), None, match).squeeze(1)
        return torch.sigmoid(logit + self.offset)


def build_model(spec: ModelSpec) -> TaskModel:
    """A freshly initialised model of ``spec`` (its ``model.family``)."""
    family = spec.model.family
    if family == "dupn":
        return DUPNModel(spec)
    from training import baselines

    return baselines.build(spec)


def unwrap(model: nn.Module) -> TaskModel:
    """The :class:`TaskModel` inside a possible DistributedDataParallel wrapper."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, TaskModel):
        raise TypeError(f"expected a TaskModel (possibly DDP-wrapped), got {type(inner).__name__}")
    return inner


def last_shared_layer(model: nn.Module) -> list[Tensor]:
    """The parameters GradNorm measures task gradients on (the model's last shared layer)."""
    return unwrap(model).shared_parameters()
