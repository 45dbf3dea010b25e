"""The baselines of the comparison benchmark, trained through the same data path, trainer,
evaluation and MLflow logging as DUPN (``training.model.family``):

* ``wide`` — one logistic regression per task (softmax regression for PPP) on one-hot and
  crossed features, hashed into ``model.wide_buckets``: profile, target item id / shop / brand /
  category / tags, the categories and tags of the behaviour history crossed with the target's
  category and tags (all of it, and the last events with their age bucket), query tokens × target
  category, city × price tags, behaviour × tag bags for PPP, plus the normalised dense inputs
  (ranking features, user dense features, prices). A linear model has no user vector: its
  "representation" is its user-side partial scores.
* ``wide_deep`` — the wide part plus a deep part whose user tower mean-pools the history's item
  vectors with the profile (:class:`BagTower`) and whose heads are MLPs over the concatenated user
  vector, target and ranking features; the two logits add up.
* ``dssm`` — two towers: the user tower (:class:`BagTower`: profile and a bag of past items) and an
  item (or talent) tower; the score is the scaled cosine of the two, plus a linear term of the
  ranking features for CTR and L2R; PPP is a softmax on the user vector.
* ``cnn_max`` — convolutions of widths ``model.cnn_kernel_sizes`` over the behaviour sequence
  (item and behaviour-property embeddings), max-pooled over time (:class:`CNNMaxTower`), with
  DUPN's multi-task design and heads.

Shapes: B rows, G slots, L sequence length, K tags, F rank features, R representation.
"""
from __future__ import annotations

import logging
from typing import Mapping, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.tables import KIND_IDS
from training.model import (
    DUPNModel, TaskModel, frozen_norm, item_embedding, need, rows_of_kind, scatter_rows, slot_view)
from training.modules import (
    FrozenNorm, PropertyEmbedding, UserProfile, bag_mean, embedding, embedding_bag, mlp, valid_mask)
from training.spec import PPP_CLASSES, ModelSpec

logger = logging.getLogger(__name__)

Batch = Mapping[str, Tensor]
RECENT = 5          # last events crossed with the target (with their age bucket)
RECENT_TAGS = 20    # last events whose tags are crossed with the target's tags
_P1, _P2, _P3, _P4 = 1_000_003, 998_244_353, 1_000_000_007, 40_503


# ====================================================================== user towers
def _seq(batch: Batch, key: str, n: int) -> Tensor:
    return need(batch, key, "the user tower")[:, :n]


def _query(bag: nn.EmbeddingBag, batch: Batch, b: int) -> Tensor:
    """Mean query-token vector (B, Dq); zeros without a query (as at serving)."""
    if "query_tokens" in batch:
        return bag_mean(bag, batch["query_tokens"])
    return bag.weight.new_zeros(b, bag.embedding_dim)


class BagTower(nn.Module):
    """Profile and a bag of past items: mean of the history's item vectors (valid positions) ‖ the
    profile vector -> MLP -> ReLU -> representation (B, R). ``projection`` is the last shared layer."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.model
        self.max_tags = spec.max_tags
        self.items = item_embedding(spec)
        self.profile = UserProfile(spec.vocab, m, frozen_norm(spec, "user_dense"))
        self.hidden = nn.Linear(self.items.out_dim + self.profile.out_dim, m.pooled_dim)
        self.projection = nn.Linear(m.pooled_dim, m.representation_dim)
        self.query = embedding_bag(spec.vocab["query_token"], m.query_dim)
        self.out_dim = m.representation_dim

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        seq_len = need(batch, "seq_len", "the user tower")
        b, seq_l = need(batch, "seq_item", "the user tower").shape
        n = max(1, min(seq_l, int(seq_len.max()))) if b else seq_l
        tags = need(batch, "seq_tags", "the user tower").reshape(b, seq_l, self.max_tags)[:, :n]
        x = self.items(_seq(batch, "seq_item", n), _seq(batch, "seq_shop", n), _seq(batch, "seq_brand", n),
                       _seq(batch, "seq_category", n), tags, _seq(batch, "seq_log_price", n), "seq_log_price")
        mask = valid_mask(seq_len, n).unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        u = self.profile(need(batch, "user_age", "the user tower"), need(batch, "user_gender", "the user tower"),
                         need(batch, "user_city", "the user tower"), need(batch, "user_dense", "the user tower"))
        hidden = torch.relu(self.hidden(torch.cat([pooled, u], dim=-1)))
        rep = torch.relu(self.projection(hidden))
        return {"representation": rep, "attention": rep.new_zeros(b, seq_l), "pooled": pooled,
                "query": _query(self.query, batch, b)}


class CNNMaxTower(nn.Module):
    """CNN-max: item ‖ behaviour-property embeddings -> 1-D convolutions of each width in
    ``model.cnn_kernel_sizes`` (``cnn_channels`` filters, ReLU) -> max over the valid positions ->
    concat with the profile vector -> Linear -> ReLU -> representation (B, R)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.model
        self.max_tags = spec.max_tags
        self.items = item_embedding(spec)
        self.properties = PropertyEmbedding(spec.vocab, m)
        width = self.items.out_dim + self.properties.out_dim
        self.kernels = list(m.cnn_kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(width, m.cnn_channels, k, padding=k - 1) for k in self.kernels)
        self.profile = UserProfile(spec.vocab, m, frozen_norm(spec, "user_dense"))
        self.projection = nn.Linear(m.cnn_channels * len(self.kernels) + self.profile.out_dim, m.representation_dim)
        self.query = embedding_bag(spec.vocab["query_token"], m.query_dim)
        self.out_dim = m.representation_dim

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        who = "the user tower"
        seq_len = need(batch, "seq_len", who)
        b, seq_l = need(batch, "seq_item", who).shape
        n = max(1, min(seq_l, int(seq_len.max()))) if b else seq_l
        tags = need(batch, "seq_tags", who).reshape(b, seq_l, self.max_tags)[:, :n]
        x = self.items(_seq(batch, "seq_item", n), _seq(batch, "seq_shop", n), _seq(batch, "seq_brand", n),
                       _seq(batch, "seq_category", n), tags, _seq(batch, "seq_log_price", n), "seq_log_price")
        p = self.properties(_seq(batch, "seq_behavior", n), _seq(batch, "seq_scene", n),
                            _seq(batch, "seq_time_bucket", n))
        h = torch.cat([x, p], dim=-1).transpose(1, 2)  # (B, D, n)
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            c = torch.relu(conv(h))[:, :, :n + k - 1]  # outputs touching at least one position
            # a window ending at output t covers positions t-k+1..t: valid if it touches a valid position
            valid = valid_mask(((seq_len + k - 1) * (seq_len > 0)).clamp(max=n + k - 1), n + k - 1)
            pooled.append(c.masked_fill(~valid.unsqueeze(1), 0.0).amax(dim=2))
        u = self.profile(need(batch, "user_age", who), need(batch, "user_gender", who), need(batch, "user_city", who),
                         need(batch, "user_dense", who))
        rep = torch.relu(self.projection(torch.cat([*pooled, u], dim=-1)))
        return {"representation": rep, "attention": rep.new_zeros(b, seq_l), "pooled": torch.cat(pooled, dim=-1),
                "query": _query(self.query, batch, b)}


# ====================================================================== wide features
def _cross(*ids: Tensor, salt: int, buckets: int) -> Tensor:
    """Hash of a tuple of index tensors (broadcast) into [1, buckets); 0 stays padding."""
    h = torch.full_like(ids[0], salt * _P4 % _P3)
    for i, x in enumerate(ids):
        h = (h * _P1 + x * (_P2 if i % 2 else 7919) + i) % _P3
    return h % (buckets - 1) + 1


class WideFeatures(nn.Module):
    """Sparse one-hot / cross features and dense inputs of the wide models, per task; ``out`` is the
    number of logits (1, or 7 for PPP). Each task owns its weight table (``model.wide_buckets``)."""

    def __init__(self, spec: ModelSpec, out: int) -> None:
        super().__init__()
        self.spec = spec
        self.buckets = spec.model.wide_buckets
        self.weights = nn.Embedding(self.buckets, out, padding_idx=0)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(out))
        self.user_dense = frozen_norm(spec, "user_dense")
        self.dense = nn.Linear(spec.user_dense_dim, out, bias=False)

    def sum_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Σ weights of the masked ids over the last dim: ids (..., n) -> (..., out)."""
        return (self.weights(ids * mask) * mask.unsqueeze(-1)).sum(-2)

    def mean_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(torch.float32)
        return self.sum_ids(ids, mask) / m.sum(-1, keepdim=True).clamp_min(1.0)

    def user_part(self, batch: Batch, salt: int) -> Tensor:
        """User-side score (B, out): profile one-hots, the history's categories and behaviour × tag bag."""
        b = self.buckets
        seq_len = batch["seq_len"]
        L = batch["seq_item"].shape[1]
        K = self.spec.max_tags
        valid = valid_mask(seq_len, L).long()
        prof = torch.stack([_cross(batch[k], salt=salt + i, buckets=b) for i, k in
                            enumerate(("user_age", "user_gender", "user_city"))], dim=1)
        score = self.sum_ids(prof, torch.ones_like(prof)) + self.bias
        score = score + self.mean_ids(_cross(batch["seq_category"], salt=salt + 10, buckets=b), valid)
        tags = batch["seq_tags"].reshape(-1, L, K)
        beh_tag = _cross(batch["seq_behavior"].unsqueeze(-1), tags, salt=salt + 11, buckets=b).reshape(-1, L * K)
        tag_valid = (tags > 0).long().reshape(-1, L * K) * valid.repeat_interleave(K, dim=1)
        score = score + self.mean_ids(beh_tag, tag_valid)
        beh_cat = _cross(batch["seq_behavior"], batch["seq_category"], salt=salt + 12, buckets=b)
        score = score + self.mean_ids(beh_cat, valid)
        return score + self.dense(self.user_dense(batch["user_dense"].float()))

    def target_part(self, batch: Batch, rows: Tensor, category: Tensor, tags: Tensor | None,
                    ids: list[Tensor], salt: int) -> Tensor:
        """Score of (user, target) crosses for rows ``rows`` with targets of shape (N, G).

        category (N, G): the target's category; tags (N, G, K) or None; ids: other one-hot target ids (N, G).
        """
        b = self.buckets
        n_rows, g = category.shape
        seq_len = batch["seq_len"].index_select(0, rows)
        L = batch["seq_item"].shape[1]
        valid = valid_mask(seq_len, L).long()
        score = category.new_zeros((n_rows, g, self.weights.embedding_dim), dtype=torch.float32)
        one_hot = torch.stack([_cross(x, salt=salt + i, buckets=b) for i, x in enumerate([category, *ids])], dim=-1)
        score = score + self.sum_ids(one_hot, (one_hot > 0).long())
        hist_cat = batch["seq_category"].index_select(0, rows)
        cross = _cross(hist_cat.unsqueeze(1), category.unsqueeze(2), salt=salt + 20, buckets=b)  # (N, G, L)
        score = score + self.mean_ids(cross, valid.unsqueeze(1).expand(-1, g, -1))
        # the last events (with their age bucket and behaviour) against the target's category
        last = (seq_len.unsqueeze(1) - 1 - torch.arange(RECENT)).clamp(min=0)  # (N, RECENT)
        has = (torch.arange(RECENT).unsqueeze(0) < seq_len.unsqueeze(1)).long()
        pick = lambda key: batch[key].index_select(0, rows).gather(1, last)  # noqa: E731
        recent = _cross(pick("seq_category").unsqueeze(1), category.unsqueeze(2), pick("seq_time_bucket").unsqueeze(1),
                        pick("seq_behavior").unsqueeze(1), salt=salt + 21, buckets=b)
        score = score + self.sum_ids(recent, has.unsqueeze(1).expand(-1, g, -1))
        profile_city = batch["user_city"].index_select(0, rows)
        if tags is not None:
            k = tags.shape[-1]
            city_tag = _cross(profile_city.view(-1, 1, 1), tags, salt=salt + 22, buckets=b)
            score = score + self.sum_ids(city_tag, (tags > 0).long())
            tag_ids = _cross(tags, salt=salt + 23, buckets=b)
            score = score + self.sum_ids(tag_ids, (tags > 0).long())
            # the tags of the last events against the target's tags (style and price level matches)
            r = min(RECENT_TAGS, L)
            last_t = (seq_len.unsqueeze(1) - 1 - torch.arange(r)).clamp(min=0)
            has_t = (torch.arange(r).unsqueeze(0) < seq_len.unsqueeze(1))
            hist_tags = batch["seq_tags"].index_select(0, rows).reshape(n_rows, L, k).gather(
                1, last_t.unsqueeze(-1).expand(-1, -1, k))  # (N, r, K)
            tt = _cross(hist_tags.reshape(n_rows, 1, r * k, 1), tags.unsqueeze(2), salt=salt + 24, buckets=b)
            tt_valid = ((hist_tags > 0) & has_t.unsqueeze(-1)).reshape(n_rows, 1, r * k, 1) & (tags > 0).unsqueeze(2)
            # explicit widths: a head may have no rows in a batch (n_rows = 0)
            width = r * k * k
            score = score + self.mean_ids(tt.reshape(n_rows, g, width), tt_valid.reshape(n_rows, g, width).long())
        if "query_tokens" in batch:
            q = batch["query_tokens"].index_select(0, rows)
            qc = _cross(q.unsqueeze(1), category.unsqueeze(2), salt=salt + 25, buckets=b)
            score = score + self.sum_ids(qc, (q > 0).long().unsqueeze(1).expand(-1, g, -1))
        return score


class WideHeads(nn.Module):
    """The wide part: one :class:`WideFeatures` per head, plus the dense target inputs (normalised
    ranking features and price) for the item heads."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        outs = {"ctr": 1, "cvr": 1, "l2r": 1, "follow": 1, "ppp": PPP_CLASSES}
        self.parts = nn.ModuleDict({h: WideFeatures(spec, outs[h]) for h in spec.head_names})
        self.rank_norm = frozen_norm(spec, "rank_features")
        self.price_norm = frozen_norm(spec, "item_log_price")
        self.rank = nn.ModuleDict({h: nn.Linear(spec.rank_dim + 1, 1, bias=False)
                                   for h in spec.head_names if h in ("ctr", "cvr", "l2r")})

    def user_scores(self, batch: Batch) -> dict[str, Tensor]:
        """The user-side partial score of each head (B, out) (no target needed)."""
        return {h: cast(WideFeatures, part).user_part(batch, salt=100 * (i + 1))
                for i, (h, part) in enumerate(self.parts.items())}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Logits of every head (B, G) / (B,) / (B, 7), zeros on rows of other kinds; ``user`` (B, H)
        the user-side partial scores of each head."""
        out: dict[str, Tensor] = {}
        n = batch["seq_len"].shape[0]
        users = self.user_scores(batch)
        item_heads = [h for h in ("ctr", "cvr", "l2r") if h in self.parts]
        if item_heads:
            rows = rows_of_kind(batch, "impressions")
            k = self.spec.max_tags
            category = slot_view(batch, "item_category", rows)
            tags = slot_view(batch, "item_tags", rows, k)
            ids = [slot_view(batch, key, rows) for key in ("item", "item_shop", "item_brand")]
            dense = torch.cat([self.rank_norm(slot_view(batch, "rank_features", rows, self.spec.rank_dim).float()),
                               self.price_norm(slot_view(batch, "item_log_price", rows).float()).unsqueeze(-1)],
                              dim=-1)
            for i, h in enumerate(item_heads):
                salt = 100 * (list(self.parts).index(h) + 1)
                part = cast(WideFeatures, self.parts[h])
                score = part.target_part(batch, rows, category, tags, ids, salt).squeeze(-1)
                score = score + users[h].index_select(0, rows) + self.rank[h](dense).squeeze(-1)
                key = {"ctr": "ctr_logit", "cvr": "cvr_logit", "l2r": "l2r_score"}[h]
                out[key] = scatter_rows(score, rows, n)
        if "follow" in self.parts:
            rows = rows_of_kind(batch, "follow")
            cat = batch["talent_category"].index_select(0, rows).unsqueeze(1)
            talent = batch["talent"].index_select(0, rows).unsqueeze(1)
            salt = 100 * (list(self.parts).index("follow") + 1)
            follow = cast(WideFeatures, self.parts["follow"])
            score = follow.target_part(batch, rows, cat, None, [talent], salt).squeeze(-1).squeeze(-1)
            out["follow_logit"] = scatter_rows(score + users["follow"].index_select(0, rows).squeeze(-1), rows, n)
        if "ppp" in self.parts:
            out["ppp_logits"] = users["ppp"]
        out["user"] = torch.cat([users[h] for h in self.parts], dim=-1)
        return out


# ====================================================================== the models
class WideModel(TaskModel):
    """``wide``: :class:`WideHeads` alone (logistic / softmax regression per task)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.wide = WideHeads(spec)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        out = self.wide(batch)
        rep = out.pop("user")
        out["representation"] = rep
        out["attention"] = rep.new_zeros(rep.shape[0], batch["seq_item"].shape[1])
        return out

    @property
    def embedding_dim(self) -> int:
        return sum(int(cast(WideFeatures, part).bias.shape[0]) for part in self.wide.parts.values())

    def user_part(self) -> nn.Module:
        return _WideUserPart(self)

    def shared_parameters(self) -> list[Tensor]:
        # nothing is shared between the tasks of a wide model; GradNorm measures on the PPP (or first) part
        first = cast(WideFeatures, next(iter(self.wide.parts.values())))
        return [first.dense.weight]


class _WideUserPart(nn.Module):
    def __init__(self, model: WideModel) -> None:
        super().__init__()
        self.wide = model.wide

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        users = self.wide.user_scores(batch)
        rep = torch.cat(list(users.values()), dim=-1)
        if "ppp" in users:
            probs = torch.softmax(users["ppp"], dim=-1)
        else:
            probs = rep.new_full((rep.shape[0], PPP_CLASSES), 1.0 / PPP_CLASSES)
        return rep, probs


class ConcatHead(nn.Module):
    """Wide&Deep's deep item head: MLP(user vector ‖ query vector ‖ target vector ‖ normalised rank features)
    -> (N, G)."""

    def __init__(self, in_dim: int, item_dim: int, hidden: int, dropout: float, rank_norm: FrozenNorm,
                 query_dim: int) -> None:
        super().__init__()
        self.rank_norm = rank_norm
        self.query_dim = query_dim
        self.mlp = mlp(in_dim + query_dim + item_dim + rank_norm.dim, [hidden, hidden // 2], 1, dropout)

    def forward(self, user: Tensor, item: Tensor, rank: Tensor, query: Tensor | None = None,
                match: Tensor | None = None) -> Tensor:
        """user (N, D), item (N, G, Di), rank (N, G, F), query (N, Dq) -> logits (N, G) (no match features:
        the bag tower has no interests)."""
        g = item.shape[1]
        if query is None:
            query = user.new_zeros(user.shape[0], self.query_dim)
        u = torch.cat([user, query], dim=-1).unsqueeze(1).expand(-1, g, -1)
        return self.mlp(torch.cat([u, item, self.rank_norm(rank.float())], dim=-1)).squeeze(-1)


class WideDeepModel(DUPNModel):
    """``wide_deep``: a deep model (:class:`BagTower`, concatenation MLP heads) whose logits add the
    wide part's."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, tower=BagTower(spec))
        m = spec.model
        d, item_dim = self.mixer.out_dim, self.tower.items.out_dim
        for h in ("ctr", "cvr"):
            if h in self.heads:
                self.heads[h] = ConcatHead(d, item_dim, m.head_hidden, m.dropout, frozen_norm(spec, "rank_features"),
                                           m.query_dim)
        self.wide = WideHeads(spec)

    def heads_forward(self, task_in: Mapping[str, Tensor], batch: Batch, query: Tensor | None = None,
                      representation: Tensor | None = None) -> dict[str, Tensor]:
        deep = super().heads_forward(task_in, batch, query, representation)
        wide = self.wide(batch)
        keys = ("ctr_logit", "cvr_logit", "l2r_score", "follow_logit", "ppp_logits")
        return {key: deep[key] + wide[key] for key in keys if key in deep}

    def user_part(self) -> nn.Module:  # type: ignore[override]
        """The deep user vector; tier probabilities from the deep and the wide PPP logits together."""
        return _WideDeepUserPart(self)

    def item_scorer(self) -> "nn.Module":  # type: ignore[override]
        raise ValueError("Wide&Deep scores items from the user's raw features (its wide part), not from a "
                         "representation: score it with forward(batch)")


class _WideDeepUserPart(nn.Module):
    def __init__(self, model: WideDeepModel) -> None:
        super().__init__()
        self.tower, self.mixer, self.wide = model.tower, model.mixer, model.wide
        self.ppp = model.heads["ppp"] if "ppp" in model.heads else None

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        user_batch = {k: v for k, v in batch.items() if k != "query_tokens"}
        rep = self.tower(user_batch)["representation"]
        if self.ppp is None:
            return rep, rep.new_full((rep.shape[0], PPP_CLASSES), 1.0 / PPP_CLASSES)
        logits = self.ppp(self.mixer(rep)["ppp"], None) + self.wide.user_scores(user_batch)["ppp"]
        return rep, torch.softmax(logits, dim=-1)


class DSSMModel(TaskModel):
    """``dssm``: user tower (:class:`BagTower`) and item / talent towers; score = scale · cos + bias
    (+ a linear term of the ranking features for CTR, CVR and L2R); PPP from the user vector."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        m = spec.model
        self.tower = BagTower(spec)
        r = m.representation_dim
        item_dim = self.tower.items.out_dim
        self.user_heads = nn.ModuleDict({h: nn.Linear(r, m.head_hidden) for h in spec.head_names if h != "ppp"})
        self.item_towers = nn.ModuleDict({h: mlp(item_dim, [m.head_hidden], m.head_hidden, m.dropout)
                                          for h in spec.head_names if h in ("ctr", "cvr", "l2r")})
        if "follow" in spec.head_names:
            self.talent = embedding(spec.vocab["talent"], m.talent_dim)
            self.talent_tower = mlp(m.talent_dim + m.category_dim, [m.head_hidden], m.head_hidden, m.dropout)
        self.scale = nn.ParameterDict({h: nn.Parameter(torch.tensor(5.0)) for h in spec.head_names if h != "ppp"})
        self.bias = nn.ParameterDict({h: nn.Parameter(torch.tensor(-2.0)) for h in spec.head_names if h != "ppp"})
        self.rank_norm = frozen_norm(spec, "rank_features")
        self.rank = nn.ModuleDict({h: nn.Linear(spec.rank_dim, 1, bias=False)
                                   for h in spec.head_names if h in ("ctr", "cvr", "l2r")})
        self.ppp = nn.Linear(r, PPP_CLASSES) if "ppp" in spec.head_names else None

    def _cos(self, head: str, user: Tensor, target: Tensor) -> Tensor:
        """user (N, R), target (N, G, H) -> (N, G)."""
        u = F.normalize(self.user_heads[head](user), dim=-1).unsqueeze(1)
        return self.scale[head] * (u * F.normalize(target, dim=-1)).sum(-1) + self.bias[head]

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        out = self.tower(batch)
        rep = out["representation"]
        n = rep.shape[0]
        item_heads = [h for h in ("ctr", "cvr", "l2r") if h in self.item_towers]
        if item_heads:
            rows = rows_of_kind(batch, "impressions")
            k = self.spec.max_tags
            items = self.tower.items(slot_view(batch, "item", rows), slot_view(batch, "item_shop", rows),
                                     slot_view(batch, "item_brand", rows), slot_view(batch, "item_category", rows),
                                     slot_view(batch, "item_tags", rows, k), slot_view(batch, "item_log_price", rows),
                                     "item_log_price")
            rank = self.rank_norm(slot_view(batch, "rank_features", rows, self.spec.rank_dim).float())
            user = rep.index_select(0, rows)
            for h in item_heads:
                score = self._cos(h, user, self.item_towers[h](items)) + self.rank[h](rank).squeeze(-1)
                out[{"ctr": "ctr_logit", "cvr": "cvr_logit", "l2r": "l2r_score"}[h]] = scatter_rows(score, rows, n)
        if "follow" in self.user_heads:
            rows = rows_of_kind(batch, "follow")
            t = torch.cat([self.talent(batch["talent"].index_select(0, rows)),
                           self.tower.items.category(batch["talent_category"].index_select(0, rows))], dim=-1)
            score = self._cos("follow", rep.index_select(0, rows), self.talent_tower(t).unsqueeze(1)).squeeze(1)
            out["follow_logit"] = scatter_rows(score, rows, n)
        if self.ppp is not None:
            out["ppp_logits"] = self.ppp(rep)
        return out

    @property
    def embedding_dim(self) -> int:
        return int(self.tower.out_dim)

    def user_part(self) -> nn.Module:
        return _TowerUserPart(self.tower, self.ppp)

    def shared_parameters(self) -> list[Tensor]:
        return [self.tower.projection.weight]


class _TowerUserPart(nn.Module):
    def __init__(self, tower: nn.Module, ppp: nn.Module | None) -> None:
        super().__init__()
        self.tower, self.ppp = tower, ppp

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        rep = self.tower({k: v for k, v in batch.items() if k != "query_tokens"})["representation"]
        if self.ppp is None:
            return rep, rep.new_full((rep.shape[0], PPP_CLASSES), 1.0 / PPP_CLASSES)
        return rep, torch.softmax(self.ppp(rep), dim=-1)


def build(spec: ModelSpec) -> TaskModel:
    """The baseline of ``spec.model.family``."""
    family = spec.model.family
    if family == "wide":
        return WideModel(spec)
    if family == "wide_deep":
        return WideDeepModel(spec)
    if family == "dssm":
        return DSSMModel(spec)
    if family == "cnn_max":
        return DUPNModel(spec, tower=CNNMaxTower(spec))
    raise ValueError(f"unknown model family '{family}'; choose dupn, wide, wide_deep, dssm, cnn_max")


__all__ = ["BagTower", "CNNMaxTower", "WideModel", "WideDeepModel", "DSSMModel", "build", "KIND_IDS"]
