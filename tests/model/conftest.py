"""Tiny model specs and random mixed-task batches for the model tests (no Spark)."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import torch
from torch import Tensor

from core.config import ModelConfig
from features.encoding import N_BEHAVIOR, N_GENDER, N_LEVEL, N_SCENE
from training.spec import ModelSpec

VOCAB = {"item": 50, "shop": 30, "brand": 30, "category": 12, "tag": 40, "query_token": 50, "talent": 40,
         "talent_category": 10, "behavior": N_BEHAVIOR, "scene": N_SCENE, "time_bucket": 9, "age": N_LEVEL,
         "gender": N_GENDER, "city": N_LEVEL}
SMALL_DIMS: dict[str, Any] = dict(
    item_dim=8, shop_dim=4, brand_dim=4, category_dim=4, tag_dim=4, behavior_dim=4, scene_dim=4, time_dim=4,
    query_dim=6, profile_dim=3, talent_dim=6, lstm_hidden=16, attention_hidden=8, pooled_dim=12,
    representation_dim=16, head_hidden=16, expert_dim=12, num_experts=3, dropout=0.0)
L, K, Q, F, U, G = 7, 3, 3, 4, 4, 4

Batch = dict[str, Tensor]


def tiny_spec(tasks: tuple[str, ...] = ("ctr", "l2r", "follow", "ppp"), **model: Any) -> ModelSpec:
    """A spec with 50-ish vocabularies, L=7 and small widths; ``model`` overrides ModelConfig fields."""
    return ModelSpec(vocab=dict(VOCAB), max_len=L, max_tags=K, max_query_tokens=Q, rank_dim=F, user_dense_dim=U,
                     model=ModelConfig(**{**SMALL_DIMS, "wide_buckets": 4096, **model}), tasks=tasks)


def random_batch(n: int = 32, seed: int = 0, kinds: list[int] | None = None) -> Batch:
    """A batch of example groups (rows) whose labels are functions of the inputs (so a model can learn them).

    Rows cycle through the kinds (0 = impressions with up to G items, 1 = follow, 2 = ppp) unless
    ``kinds`` is given; sequence lengths include 0 and the full length L; impression rows have
    1..G items (the rest padding); every other impression row is an L2R list.
    """
    g = torch.Generator().manual_seed(seed)

    def ids(vocab: str, *shape: int) -> Tensor:
        return torch.randint(2, VOCAB[vocab], shape, generator=g)

    seq_len = torch.randint(0, L + 1, (n,), generator=g)
    seq_len[0], seq_len[1 % n] = 0, L
    valid = torch.arange(L).unsqueeze(0) < seq_len.unsqueeze(1)
    batch: Batch = {"seq_len": seq_len}
    for key, vocab in (("seq_item", "item"), ("seq_shop", "shop"), ("seq_brand", "brand"),
                       ("seq_category", "category"), ("seq_behavior", "behavior"), ("seq_scene", "scene"),
                       ("seq_time_bucket", "time_bucket")):
        batch[key] = ids(vocab, n, L) * valid
    tags = ids("tag", n, L, K) * (torch.rand(n, L, K, generator=g) < 0.7) * valid.unsqueeze(-1)
    batch["seq_tags"] = tags.reshape(n, L * K)
    batch["seq_log_price"] = torch.randn(n, L, generator=g) * valid
    batch["user_age"], batch["user_gender"], batch["user_city"] = ids("age", n), ids("gender", n), ids("city", n)
    batch["user_dense"] = torch.randn(n, U, generator=g)
    kind = torch.tensor(kinds) if kinds is not None else torch.arange(n) % 3
    batch["kind_id"] = kind
    imp = kind == 0
    n_items = torch.where(imp, torch.randint(1, G + 1, (n,), generator=g), torch.zeros(n, dtype=torch.long))
    batch["n_items"] = n_items
    slots = torch.arange(G).unsqueeze(0) < n_items.unsqueeze(1)
    query = ids("query_token", n, Q) * (torch.rand(n, Q, generator=g) < 0.6) * imp.unsqueeze(1)
    query[::2] = 0
    batch["query_tokens"] = query
    for key, vocab in (("item", "item"), ("item_shop", "shop"), ("item_brand", "brand"),
                       ("item_category", "category")):
        batch[key] = ids(vocab, n, G) * slots
    batch["item_tags"] = (ids("tag", n, G, K) * slots.unsqueeze(-1)).reshape(n, G * K)
    batch["item_log_price"] = torch.randn(n, G, generator=g) * slots
    batch["rank_features"] = (torch.randn(n, G, F, generator=g) * slots.unsqueeze(-1)).reshape(n, G * F)
    batch["item_query_share"] = torch.rand(n, G, generator=g) * slots * (query[:, :1] != 0)
    # Learnable labels: parity of the target's ids and of the user's age.
    click = (batch["item"] % 2 == 0).float() * slots
    batch["label_click"] = click
    batch["label_cart"] = click * (batch["item_shop"] % 2 == 0).float()
    batch["label_buy"] = click * (batch["item_brand"] % 2 == 0).float()
    batch["ctr_weight"] = slots.float()
    batch["l2r"] = (imp & (torch.arange(n) % 2 == 0)).long()
    batch["l2r_gain"] = (1.0 + batch["label_cart"] + 2.0 * batch["label_buy"]) * slots
    follow = kind == 1
    batch["talent"] = torch.where(follow, ids("talent", n), torch.zeros(n, dtype=torch.long))
    batch["talent_category"] = torch.where(follow, ids("category", n), torch.zeros(n, dtype=torch.long))
    prior = torch.stack([torch.randint(0, 50, (n,), generator=g).float(), torch.rand(n, generator=g),
                         torch.randint(0, 20, (n,), generator=g).float(), torch.rand(n, generator=g)], dim=1)
    batch["talent_prior"] = prior * follow.unsqueeze(1)
    batch["label_follow"] = ((batch["talent"] % 2 == 0) & follow).float()
    batch["follow_weight"] = follow.float()
    batch["label_tier"] = torch.where(kind == 2, batch["user_age"] % 7, torch.full_like(kind, -1))
    batch["ppp_user"] = torch.zeros(n, dtype=torch.long)
    batch["user_id"] = torch.arange(n) // 2 + 1000
    batch["list_id"] = torch.arange(n) + 5000
    return batch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight the machine's other jobs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def make_spec() -> Callable[..., ModelSpec]:
    return tiny_spec


@pytest.fixture()
def make_batch() -> Callable[..., Batch]:
    return random_batch
