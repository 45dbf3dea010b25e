"""Small composable parts of the DUPN user tower (Ni et al., "Perceive Your Users in Depth", KDD 2018).

Shapes: B = batch size, L = sequence length, K = tags per item, Q = query tokens,
H = LSTM hidden size. Index 0 of every categorical input is padding (embeds to zeros and
is never trained), index 1 is "unknown" (see :mod:`features.encoding`).
"""
from __future__ import annotations

import copy
import logging
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from core.config import ModelConfig

logger = logging.getLogger(__name__)

EMBEDDING_INIT_STD = 0.1


def embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding table with padding index 0 (zero row, no gradient), initialised N(0, 0.1²)."""
    table = nn.Embedding(num, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def embedding_bag(num: int, dim: int) -> nn.EmbeddingBag:
    """A mean-pooling embedding bag that skips index 0; an all-padding bag embeds to zeros."""
    bag = nn.EmbeddingBag(num, dim, mode="mean", padding_idx=0)
    nn.init.normal_(bag.weight, std=EMBEDDING_INIT_STD)
    with torch.no_grad():
        bag.weight[0].zero_()
    return bag


def bag_mean(bag: nn.EmbeddingBag, ids: Tensor) -> Tensor:
    """Mean embedding of the non-zero ids of each bag.

    Args:
        ids: (..., K) int64.

    Returns:
        (..., D); zeros for bags with no non-zero id.
    """
    lead = ids.shape[:-1]
    return bag(ids.reshape(-1, ids.shape[-1])).reshape(*lead, bag.embedding_dim)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each hidden width, then a final Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class FrozenNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps)`` with statistics fixed at construction.

    The statistics come from ``features/feature_stats`` and are stored as buffers (saved
    with the model, never trained): training and serving normalise identically, which the
    paper found batch normalisation does not guarantee.

    Args:
        mean: per-column means, length D (1 for a scalar input).
        var: per-column variances, length D.
    """

    mean: Tensor
    inv_std: Tensor

    def __init__(self, mean: Sequence[float], var: Sequence[float], eps: float = 1e-5) -> None:
        super().__init__()
        if len(mean) != len(var) or not len(mean):
            raise ValueError(f"FrozenNorm needs equally long non-empty mean and var, got {len(mean)} / {len(var)}")
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        var_t = torch.tensor([float(v) for v in var], dtype=torch.float32)
        if bool((var_t < 0).any()):
            raise ValueError(f"FrozenNorm variances must be >= 0, got {list(var)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("inv_std", torch.rsqrt(var_t + eps))
        self.dim = len(mean)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., D), or any shape when D == 1 (a scalar input). Returns the same shape."""
        if self.dim > 1 and x.shape[-1] != self.dim:
            raise ValueError(f"FrozenNorm expects a last dimension of {self.dim}, got shape {tuple(x.shape)}")
        return (x - self.mean) * self.inv_std


def relative_price(log_price: Tensor, category: Tensor, category_prices: Tensor, rel_norm: FrozenNorm) -> Tensor:
    """(...) log prices relative to their category's reference log price (``category_prices`` indexed by
    ``category``), normalised by ``rel_norm`` (0 where the price is unknown, before normalisation)."""
    log_price = log_price.float()
    rel = torch.where(log_price > 0, log_price - category_prices[category], torch.zeros_like(log_price))
    return rel_norm(rel)


class RelativePrice(nn.Module):
    """:meth:`ItemEmbedding.relative_price` of an item embedding alone: its frozen reference prices and
    normalisation as buffers, without the embedding tables (for representation transfer, which reads a
    published vector's behaviour-type prices and needs targets' prices in the same units)."""

    category_prices: Tensor

    def __init__(self, items: "ItemEmbedding") -> None:
        super().__init__()
        self.register_buffer("category_prices", items.category_prices.detach().clone())
        self.rel_norm = copy.deepcopy(items.rel_norm)

    def forward(self, log_price: Tensor, category: Tensor) -> Tensor:
        return relative_price(log_price, category, self.category_prices, self.rel_norm)


class ItemEmbedding(nn.Module):
    """Item id, shop, brand, category, mean-pooled tags, normalised log price and the normalised log price
    relative to the category's mean price, concatenated.

    One instance embeds both the behaviour-sequence items and the target items, so an item
    has one representation wherever it appears. Each price input keeps its own frozen
    statistics (``seq_log_price`` / ``item_log_price``); the relative price uses the frozen mean
    log price of each category (``category_prices``) and its own statistics (``rel_norm``).

    Args:
        vocab: embedding-table sizes (keys item, shop, brand, category, tag).
        cfg: the dims (item_dim, shop_dim, brand_dim, category_dim, tag_dim).
        price_norms: price input name -> its :class:`FrozenNorm` (width 1).
        category_prices: (vocab["category"],) mean log price of each category index (0 where unknown:
            the relative price is then the price); None = all zeros.
        rel_norm: :class:`FrozenNorm` of the relative log price (width 1); None = identity.
    """

    category_prices: Tensor

    def __init__(self, vocab: Mapping[str, int], cfg: ModelConfig, price_norms: Mapping[str, FrozenNorm],
                 category_prices: Tensor | None = None, rel_norm: FrozenNorm | None = None) -> None:
        super().__init__()
        self.item = embedding(vocab["item"], cfg.item_dim)
        self.shop = embedding(vocab["shop"], cfg.shop_dim)
        self.brand = embedding(vocab["brand"], cfg.brand_dim)
        self.category = embedding(vocab["category"], cfg.category_dim)
        self.tags = embedding_bag(vocab["tag"], cfg.tag_dim)
        self.price_norms = nn.ModuleDict(dict(price_norms))
        prices = torch.zeros(vocab["category"]) if category_prices is None else category_prices.float()
        if prices.shape != (vocab["category"],):
            raise ValueError(f"category_prices must have one entry per category index ({vocab['category']}), "
                             f"got shape {tuple(prices.shape)}")
        self.register_buffer("category_prices", prices)
        self.rel_norm = rel_norm if rel_norm is not None else FrozenNorm([0.0], [1.0], eps=0.0)
        self.out_dim = cfg.item_dim + cfg.shop_dim + cfg.brand_dim + cfg.category_dim + cfg.tag_dim + 2

    def forward(self, item: Tensor, shop: Tensor, brand: Tensor, category: Tensor, tags: Tensor,
                log_price: Tensor, price_input: str) -> Tensor:
        """Item vectors.

        Args:
            item, shop, brand, category: (...) int64 indices.
            tags: (..., K) int64, 0 = no tag.
            log_price: (...) float32 (0 = unknown).
            price_input: which price statistics to use (a key of ``price_norms``).

        Returns:
            (..., out_dim).
        """
        if price_input not in self.price_norms:
            raise KeyError(f"no price statistics '{price_input}'; known: {sorted(self.price_norms)}")
        log_price = log_price.float()
        price = self.price_norms[price_input](log_price).unsqueeze(-1)
        return torch.cat([self.item(item), self.shop(shop), self.brand(brand), self.category(category),
                          bag_mean(self.tags, tags), price, self.relative_price(log_price, category).unsqueeze(-1)],
                         dim=-1)

    def relative_price(self, log_price: Tensor, category: Tensor) -> Tensor:
        """(...) normalised log price relative to the category's reference price (0 where the price is
        unknown, before normalisation)."""
        return relative_price(log_price, category, self.category_prices, self.rel_norm)

    @property
    def key_dim(self) -> int:
        return self.category.embedding_dim + self.tags.embedding_dim

    def key(self, category: Tensor, tags: Tensor | None = None) -> Tensor:
        """An item's interest key: category embedding ‖ mean tag embedding (zeros without tags).

        category (...), tags (..., K) -> (..., Dc + Dt). Interests (attention-pooled keys of the
        behaviours) and targets meet in this space (:func:`match_scores`)."""
        cat = self.category(category)
        if tags is None:
            tag = cat.new_zeros(*cat.shape[:-1], self.tags.embedding_dim)
        else:
            tag = bag_mean(self.tags, tags)
        return torch.cat([cat, tag], dim=-1)


def match_scores(interests: Tensor, keys: Tensor, split: int) -> Tensor:
    """Cosine similarities of each interest with each target key, separately for the category part
    (the first ``split`` columns) and the tag part (0 where a vector is zero, e.g. padding).

    interests (N, K, Dk), keys (N, G, Dk) -> (N, G, 2K): the category matches of the K interests,
    then their tag matches (the user-target match features of the heads). An interest is an
    attention-weighted mean of the behaviours' keys: its similarity with a target is high when the
    head's attention sits on behaviour in the target's category (or of its style)."""
    def cos(a: Tensor, b: Tensor) -> Tensor:
        a = torch.nn.functional.normalize(a, dim=-1, eps=1e-8)
        b = torch.nn.functional.normalize(b, dim=-1, eps=1e-8)
        return torch.einsum("nkd,ngd->ngk", a, b)

    cat = cos(interests[..., :split], keys[..., :split])
    if keys.shape[-1] <= split:
        return cat
    return torch.cat([cat, cos(interests[..., split:], keys[..., split:])], dim=-1)


class PropertyEmbedding(nn.Module):
    """Behaviour properties p_t: behaviour type, scene and time bucket embeddings, concatenated.

    Args:
        vocab: sizes (keys behavior, scene, time_bucket).
        cfg: behavior_dim, scene_dim, time_dim.
    """

    def __init__(self, vocab: Mapping[str, int], cfg: ModelConfig) -> None:
        super().__init__()
        self.behavior = embedding(vocab["behavior"], cfg.behavior_dim)
        self.scene = embedding(vocab["scene"], cfg.scene_dim)
        self.time_bucket = embedding(vocab["time_bucket"], cfg.time_dim)
        self.out_dim = cfg.behavior_dim + cfg.scene_dim + cfg.time_dim

    def forward(self, behavior: Tensor, scene: Tensor, time_bucket: Tensor) -> Tensor:
        """behavior, scene, time_bucket: (B, L) int64. Returns p: (B, L, out_dim)."""
        return torch.cat([self.behavior(behavior), self.scene(scene), self.time_bucket(time_bucket)], dim=-1)


class PropertyGatedLSTM(nn.Module):
    """DUPN's property-gated LSTM over the behaviour sequence.

    For each step t with item input x_t and property p_t::

        i_t, f_t, o_t = sigmoid(W x_t + U h_{t-1} + V p_t + b)     (V p_t only if use_property)
        c~_t = tanh(W_c x_t + U_c h_{t-1} + b_c)                    (item input only, never p_t)
        c_t = f_t * c_{t-1} + i_t * c~_t,   h_t = o_t * tanh(c_t)

    The property decides how much of an item is written, kept and read, but is never
    written into the memory itself. The input and property projections of all steps are one
    matrix product; only the recurrence loops, inside PyTorch's fused LSTM kernel, which
    receives the block weight ``[[W_i V_i] [W_f V_f] [W_c 0] [W_o V_o]]`` built from the
    parameters below (the zero block keeps p_t out of the candidate).
    :meth:`forward_reference` is the same computation as a plain Python loop.

    Sequences are right-padded: padded steps come after every valid one, so they never
    change the states of valid steps.

    Args:
        input_dim: Dx, width of the item input.
        property_dim: Dp, width of the property input (ignored unless use_property).
        hidden: H.
        use_property: feed p_t into the three gates (DUPN); False gives a plain LSTM.
    """

    def __init__(self, input_dim: int, property_dim: int, hidden: int, use_property: bool) -> None:
        super().__init__()
        self.input_dim, self.hidden, self.use_property = input_dim, hidden, use_property
        self.property_dim = property_dim if use_property else 0
        # Gate rows are ordered input, forget, output.
        self.gate_input = nn.Linear(input_dim, 3 * hidden)
        self.gate_property = nn.Linear(property_dim, 3 * hidden, bias=False) if use_property else None
        self.candidate_input = nn.Linear(input_dim, hidden)
        # Recurrent rows: input, forget, output gates, then the candidate.
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)
        with torch.no_grad():
            self.gate_input.bias[hidden:2 * hidden].fill_(1.0)  # remember by default

    def _fused_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W_ih (4H, Dx+Dp), W_hh (4H, H), b (4H,)) in PyTorch's i, f, g, o row order."""
        h = self.hidden
        wi, wf, wo = self.gate_input.weight.split(h)
        bi, bf, bo = self.gate_input.bias.split(h)
        wc = self.candidate_input.weight
        if self.gate_property is not None:
            vi, vf, vo = self.gate_property.weight.split(h)
            zero = wc.new_zeros(h, self.property_dim)
            wi, wf, wc, wo = (torch.cat([wi, vi], 1), torch.cat([wf, vf], 1), torch.cat([wc, zero], 1),
                              torch.cat([wo, vo], 1))
        ui, uf, uo, uc = self.recurrent.weight.split(h)
        w_ih = torch.cat([wi, wf, wc, wo], 0)
        w_hh = torch.cat([ui, uf, uc, uo], 0)
        bias = torch.cat([bi, bf, self.candidate_input.bias, bo], 0)
        return w_ih, w_hh, bias

    def _inputs(self, x: Tensor, p: Tensor | None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"PropertyGatedLSTM expects x of shape (B, L, {self.input_dim}), got {tuple(x.shape)}")
        if self.gate_property is None:
            return x
        if p is None or p.shape[:2] != x.shape[:2] or p.shape[-1] != self.property_dim:
            raise ValueError(f"PropertyGatedLSTM(use_property=True) needs p of shape (B, L, {self.property_dim}) "
                             f"matching x {tuple(x.shape)}, got {None if p is None else tuple(p.shape)}")
        return torch.cat([x, p], dim=-1)

    def forward(self, x: Tensor, p: Tensor | None = None) -> Tensor:
        """Hidden states of every step.

        Args:
            x: (B, L, Dx) item inputs.
            p: (B, L, Dp) properties; required iff use_property.

        Returns:
            (B, L, H).
        """
        inputs = self._inputs(x, p)
        w_ih, w_hh, bias = self._fused_weights()
        h0 = inputs.new_zeros(1, inputs.shape[0], self.hidden)
        out, _, _ = torch.lstm(inputs, (h0, h0), [w_ih, w_hh, bias, torch.zeros_like(bias)],
                               True, 1, 0.0, self.training, False, True)
        return out

    def forward_reference(self, x: Tensor, p: Tensor | None = None) -> Tensor:
        """:meth:`forward` written step by step from the equations (slow; for tests and reading)."""
        self._inputs(x, p)
        h_dim = self.hidden
        gates_x = self.gate_input(x)
        if self.gate_property is not None and p is not None:
            gates_x = gates_x + self.gate_property(p)
        cand_x = self.candidate_input(x)
        u_gates, u_cand = self.recurrent.weight[:3 * h_dim], self.recurrent.weight[3 * h_dim:]
        h = x.new_zeros(x.shape[0], h_dim)
        c = x.new_zeros(x.shape[0], h_dim)
        states = []
        for t in range(x.shape[1]):
            i, f, o = torch.sigmoid(gates_x[:, t] + h @ u_gates.T).split(h_dim, dim=-1)
            c_tilde = torch.tanh(cand_x[:, t] + h @ u_cand.T)
            c = f * c + i * c_tilde
            h = o * torch.tanh(c)
            states.append(h)
        return torch.stack(states, dim=1)


def valid_mask(seq_len: Tensor, max_len: int) -> Tensor:
    """(B, L) bool, True at positions ``t < seq_len`` (seq_len is clipped to [0, L])."""
    positions = torch.arange(max_len, device=seq_len.device)
    return positions.unsqueeze(0) < seq_len.clamp(0, max_len).unsqueeze(1)


class AttentionPooling(nn.Module):
    """Multi-head attention over the LSTM states, conditioned on the query, the user and the properties.

    ``score_{t,k} = v_k^T tanh(W_h h_t + W_p p_t + W_q q + W_u u)``, softmax over the valid positions
    for each of the K heads: each head is one attention distribution over the behaviours (one may
    learn to follow recent behaviour, another purchases, another the query); DUPN's single
    attention is K = 1.

    Args:
        state_dim: H.
        property_dim: Dp, or 0 to leave properties out of the attention.
        query_dim: Dq.
        user_dim: Du.
        hidden: attention width A.
        heads: K.
    """

    def __init__(self, state_dim: int, property_dim: int, query_dim: int, user_dim: int, hidden: int,
                 heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.state = nn.Linear(state_dim, hidden)
        self.property = nn.Linear(property_dim, hidden, bias=False) if property_dim > 0 else None
        self.query = nn.Linear(query_dim, hidden, bias=False)
        self.user = nn.Linear(user_dim, hidden, bias=False)
        self.score = nn.Linear(hidden, heads, bias=False)

    def forward(self, states: Tensor, seq_len: Tensor, query: Tensor, user: Tensor,
                properties: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pool the states.

        Args:
            states: (B, L, H).
            seq_len: (B,) int64; positions >= seq_len are padding.
            query: (B, Dq), zeros when there is no query.
            user: (B, Du).
            properties: (B, L, Dp); required iff the module was built with property_dim > 0.

        Returns:
            pooled (B, K, H) and weights (B, K, L): weights are 0 at padding and sum to 1 over the
            valid positions; a row with seq_len = 0 gets zero weights and zero pooled vectors.
        """
        hidden = self.state(states) + (self.query(query) + self.user(user)).unsqueeze(1)
        if self.property is not None:
            if properties is None:
                raise ValueError("this AttentionPooling uses behaviour properties; pass properties=(B, L, Dp)")
            hidden = hidden + self.property(properties)
        scores = self.score(torch.tanh(hidden)).transpose(1, 2)  # (B, K, L)
        mask = valid_mask(seq_len, states.shape[1]).unsqueeze(1)
        any_valid = mask.any(dim=2, keepdim=True)
        # Rows without any valid position softmax over zeros instead of -inf (no NaN), then
        # the mask zeroes them.
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~any_valid, 0.0)
        weights = torch.softmax(scores, dim=2) * mask.to(scores.dtype)
        pooled = torch.bmm(weights, states)
        return pooled, weights


class RecencyPooling(nn.Module):
    """Time-decay pools of the behaviours: ``w_{r,t} = exp(a_r[age bucket of t])``, R pools.

    Unlike attention, the weights are not normalised over the sequence and depend on the age only:
    pool r's total weight (its *mass*) is a decayed count of the user's behaviours, and a weighted
    mean of the behaviours' keys under it says which categories that recent activity was in. Heads
    read both (:meth:`training.model.UserTower.match`), which is what "the hours since the user's
    last event in the target's category" and "the user's decayed share of events there" say. The
    log-weights start as ``-λ_r · (bucket - 1)`` (λ from fast to slow decay) and are learned, capped
    at ``max_log_weight``.

    With ``behaviors`` > 0, each pool also learns a log-weight per behaviour type (starting at 0), so
    a pool can follow, e.g., the recent purchases: ``w_{r,t} = exp(a_r[age_t] + b_r[behaviour_t])``.
    Each behaviour type in ``only`` adds one pool, after the ``pools`` others, that counts behaviours of
    that type alone (weight 0 on the others; its age weights start as the slowest pool's).

    Args:
        buckets: the time-bucket vocabulary (0 = padding).
        pools: the pools over every behaviour; R = pools + len(only).
        behaviors: the behaviour-type vocabulary, or 0 for weights by age only.
        only: behaviour-type indices, one more pool each (e.g. purchases: ``model.purchase_pool``).
        behavior_vocab: the behaviour-type vocabulary's size (needed with ``only``).
    """

    def __init__(self, buckets: int, pools: int, max_log_weight: float = 2.0, behaviors: int = 0,
                 only: Sequence[int] = (), behavior_vocab: int = 0) -> None:
        super().__init__()
        rates = torch.logspace(0.0, -1.0, pools) if pools > 1 else torch.ones(1)
        if only:  # each pool of one behaviour type decays like the slowest of the others at first
            rates = torch.cat([rates, rates[-1:].expand(len(only))])
        total = pools + len(only)
        age = torch.arange(buckets, dtype=torch.float32).clamp_min(1.0) - 1.0
        self.log_weight = nn.Parameter(-rates.unsqueeze(1) * age.unsqueeze(0))  # (R, buckets)
        self.behavior_log_weight = nn.Parameter(torch.zeros(total, behaviors)) if behaviors else None
        self.max_log_weight = max_log_weight
        self.allowed: Tensor | None
        if not only:
            self.allowed = None
        else:
            if not behavior_vocab or max(only) >= behavior_vocab:
                raise ValueError(f"pools of behaviour types {list(only)} need the behaviour vocabulary's size "
                                 f"(behavior_vocab={behavior_vocab})")
            allowed = torch.ones(total, behavior_vocab)
            for r, kind in enumerate(only, start=pools):
                allowed[r] = 0.0
                allowed[r, kind] = 1.0
            self.register_buffer("allowed", allowed, persistent=False)

    def weights(self, time_bucket: Tensor, valid: Tensor, behavior: Tensor | None = None) -> Tensor:
        """time_bucket (B, L) int64, valid (B, L) bool (, behavior (B, L) int64, needed with behaviour
        weights) -> each pool's weight of each behaviour (B, R, L), 0 on padding."""
        log_w = self.log_weight[:, time_bucket]  # (R, B, L)
        if (self.behavior_log_weight is not None or self.allowed is not None) and behavior is None:
            raise ValueError("this RecencyPooling weighs behaviour types; pass behavior=(B, L)")
        if self.behavior_log_weight is not None:
            log_w = log_w + self.behavior_log_weight[:, behavior]
        w = torch.exp(log_w.clamp(max=self.max_log_weight))
        if self.allowed is not None:
            w = w * self.allowed[:, behavior]  # pools of one behaviour type: 0 on the others
        return w.permute(1, 0, 2) * valid.unsqueeze(1).to(log_w.dtype)

    def forward(self, keys: Tensor, time_bucket: Tensor, valid: Tensor,
                behavior: Tensor | None = None, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """keys (B, L, D), time_bucket (B, L) int64, valid (B, L) bool (, behavior (B, L) int64, needed
        with behaviour weights) -> pooled (B, R, D), the weighted means of the keys (zeros without
        behaviours), and log(1 + mass) (B, R). ``weights``: :meth:`weights` of the same inputs when the
        caller already computed them (not computed again)."""
        w = (self.weights(time_bucket, valid, behavior) if weights is None else weights).to(keys.dtype)  # (B, R, L)
        mass = w.sum(dim=2)
        pooled = torch.bmm(w, keys) / mass.clamp_min(1e-6).unsqueeze(-1)
        return pooled, torch.log1p(mass)


def category_profile(weights: Tensor, category: Tensor, buckets: int) -> Tensor:
    """Each pool's decayed behaviour count per category: weights (B, R, L) (:meth:`RecencyPooling.weights`),
    category (B, L) int64 category indices -> log(1 + the pool's weight summed over the behaviours whose
    category falls in each of ``buckets`` buckets (index mod ``buckets``)) (B, R, buckets). With at least as
    many buckets as categories, entry (b, r, c) is exactly pool r's decayed count of user b's behaviours in
    category c: the GBDT's "decayed events in the target's category" for every category at once, which a
    head reads by the target's category (:meth:`training.model.UserTower.match`), where a cosine of learned
    category embeddings only approximates it."""
    index = (category % buckets).unsqueeze(1).expand_as(weights)
    profile = weights.new_zeros(weights.shape[0], weights.shape[1], buckets)
    return torch.log1p(profile.scatter_add(2, index, weights))


def profile_match(profile: Tensor, log_mass: Tensor, category: Tensor, top_share: bool = False) \
        -> tuple[Tensor, ...]:
    """What each time-decay pool's category profile says about targets: profile (N, P, buckets)
    (:func:`category_profile`), log_mass (N, P) (log(1 + each pool's decayed count)), category (N, G)
    int64 target category indices -> (N, G, P) twice: each pool's log(1 + decayed count) in the target's
    category (bucket ``category mod buckets``), and that count's share of the pool's mass (0 without
    behaviours); with ``top_share`` a third: that count over the pool's largest count in any category
    (1 for the category the user acts in most, 0 without behaviours), how the target ranks among the
    user's interests rather than how much of the activity it holds. No parameter: a downstream model
    reading a published vector gets the same values as the model's own heads."""
    buckets = profile.shape[-1]
    pools = profile.shape[1]
    index = (category % buckets).unsqueeze(1).expand(-1, pools, -1)
    in_target = profile.gather(2, index).transpose(1, 2)  # (N, G, P)
    share = torch.expm1(in_target) / torch.expm1(log_mass).clamp_min(1e-6).unsqueeze(1)
    if not top_share:
        return in_target, share
    top = torch.expm1(profile.max(dim=2).values).clamp_min(1e-6).unsqueeze(1)  # (N, 1, P)
    return in_target, share, torch.expm1(in_target) / top


def interest_match(scores: Tensor, heads: int, interests: int, log_mass: Tensor | None, profile: Tensor | None,
                   category: Tensor, top_share: bool = False) -> Tensor:
    """The user-target match features of interests with time-decay pools: scores (N, G, S) (:func:`match_scores`;
    its first ``interests`` = K + P columns the category cosines, the pools' after the K = ``heads`` attention
    heads'), log_mass (N, P) (each pool's log(1 + decayed count); None without pools), profile (N, P, buckets)
    (None without the category profile), category (N, G) -> scores ‖ each pool's category cosine times its
    log mass ‖ (with the profile) :func:`profile_match`'s count and share (and with ``top_share`` the count
    over the top category's): (N, G, S + P (+ 2P or 3P))."""
    if log_mass is None:
        return scores
    parts = [scores, scores[..., heads:interests] * log_mass.unsqueeze(1)]
    if profile is not None:
        parts += list(profile_match(profile, log_mass, category, top_share))
    return torch.cat(parts, dim=-1)


class UserProfile(nn.Module):
    """The user profile vector u: age, gender and city embeddings plus normalised dense features.

    Args:
        vocab: sizes (keys age, gender, city).
        cfg: profile_dim (each embedding's width).
        dense_norm: :class:`FrozenNorm` of ``user_dense`` (width U).
    """

    def __init__(self, vocab: Mapping[str, int], cfg: ModelConfig, dense_norm: FrozenNorm) -> None:
        super().__init__()
        self.age = embedding(vocab["age"], cfg.profile_dim)
        self.gender = embedding(vocab["gender"], cfg.profile_dim)
        self.city = embedding(vocab["city"], cfg.profile_dim)
        self.dense_norm = dense_norm
        self.out_dim = 3 * cfg.profile_dim + dense_norm.dim

    def forward(self, age: Tensor, gender: Tensor, city: Tensor, dense: Tensor) -> Tensor:
        """age, gender, city: (B,) int64; dense: (B, U). Returns u: (B, 3 * profile_dim + U)."""
        return torch.cat([self.age(age), self.gender(gender), self.city(city), self.dense_norm(dense.float())],
                         dim=-1)


def required_match(match: Tensor | None, shape: str) -> Tensor:
    """The match features a head built to read them (``match_dim > 0``) was given; a one-line error
    naming the expected ``shape`` when the caller passed none."""
    if match is None:
        raise ValueError(f"this head reads the user-target match features; pass match {shape}")
    return match


def ramps(x: Tensor, low: Tensor, width: Tensor) -> Tensor:
    """``clamp((x - low) / width, 0, 1)``: each ramp rises from 0 at ``low`` to 1 at ``low + width``. Ramps
    between consecutive knots are the piecewise-linear pieces every encoder of the platform uses (a linear
    layer on them is any piecewise-linear function of ``x`` with those knots)."""
    return ((x - low) / width).clamp(0.0, 1.0)


class QuantileRanks(nn.Module):
    """Raw values (..., C) -> their quantile ranks in [0, 1] at each column's knots (the training split's
    quantiles, kept in the model's spec): linear between consecutive distinct knots (the k-th of m + 1
    knots is rank k / m), 0 below the first and 1 above the last, 0 in a column with one knot and NaN
    (missing) in a column with none; NaN stays NaN. The torch twin of
    :func:`training.side_inputs.quantile_ranks`.
    """

    lower: Tensor
    width: Tensor
    weight: Tensor
    unknown: Tensor

    def __init__(self, knots: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.columns = len(knots)
        segments = max([len(k) - 1 for k in knots] + [1])
        lower = torch.zeros(self.columns, segments)
        width = torch.ones(self.columns, segments)
        weight = torch.zeros(self.columns, segments)
        for j, k in enumerate(knots):
            m = len(k) - 1
            if m >= 1:
                pts = torch.tensor([float(x) for x in k], dtype=torch.float64)
                if bool((pts[1:] <= pts[:-1]).any()):
                    raise ValueError(f"side input column {j}: knots must increase strictly, got {list(k)[:8]}")
                lower[j, :m] = pts[:-1].float()
                width[j, :m] = (pts[1:] - pts[:-1]).float()
                weight[j, :m] = 1.0 / m
        # part of the spec, not of the weights: rebuilt from it
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("width", width, persistent=False)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("unknown", torch.tensor([len(k) == 0 for k in knots], dtype=torch.bool),
                             persistent=False)

    def forward(self, values: Tensor) -> Tensor:
        if values.shape[-1] != self.columns:
            raise ValueError(f"side inputs: expected {self.columns} raw columns (the spec's side_columns), got "
                             f"{values.shape[-1]}; read them from features/hybrid_examples")
        x = values.float().unsqueeze(-1)
        ranks = (ramps(x, self.lower, self.width) * self.weight).sum(-1)
        return ranks.masked_fill(self.unknown, float("nan"))


class QuantilePieces(nn.Module):
    """Hand-crafted columns given as quantile ranks q in [0, 1] (NaN when missing) -> piecewise-linear pieces
    ‖ missing indicators: (..., C) -> (..., C · (bins + 1)).

    Piece k of a column is ``clamp(q · bins − k, 0, 1)``. Knots at equally spaced quantile ranks are knots at
    the training quantiles, so this is the piecewise-linear encoding of :mod:`training.feature_mlp` applied
    after :func:`training.side_inputs.quantile_ranks`. A missing value gives its pieces 0 and its indicator 1.
    No parameters: the head reading it learns what each piece means.
    """

    steps: Tensor

    def __init__(self, columns: int, bins: int) -> None:
        super().__init__()
        self.columns, self.bins = columns, bins
        self.out_dim = columns * (bins + 1)
        self.register_buffer("steps", torch.arange(bins, dtype=torch.float32), persistent=False)

    def forward(self, ranks: Tensor) -> Tensor:
        if ranks.shape[-1] != self.columns:
            raise ValueError(f"side inputs: expected {self.columns} columns (model.side_inputs), got "
                             f"{ranks.shape[-1]}; attach them with training/side_inputs.py")
        missing = torch.isnan(ranks)
        q = torch.where(missing, torch.zeros_like(ranks), ranks)
        pieces = (q.unsqueeze(-1) * self.bins - self.steps).clamp(0.0, 1.0) * (~missing).unsqueeze(-1)
        return torch.cat([pieces.flatten(-2), missing.to(ranks.dtype)], dim=-1)
