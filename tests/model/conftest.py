"""Tiny model specs and random mixed-task batches for the model tests (no Spark)."""
from __future__ import annotations

from typing import Any, Callable

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
L, K, Q, F, U = 7, 3, 3, 4, 4

Batch = dict[str, Tensor]


def tiny_spec(tasks: tuple[str, ...] = ("ctr", "l2r", "follow", "ppp"), **model: Any) -> ModelSpec:
    """A spec with 50-ish vocabularies, L=7 and small widths; ``model`` overrides ModelConfig fields."""
    return ModelSpec(vocab=dict(VOCAB), max_len=L, max_tags=K, max_query_tokens=Q, rank_dim=F, user_dense_dim=U,
                     model=ModelConfig(**{**SMALL_DIMS, **model}), tasks=tasks)


def random_batch(n: int = 32, seed: int = 0, task_ids: list[int] | None = None) -> Batch:
    """A mixed-task batch whose labels are functions of the inputs (so a model can learn them).

    Rows cycle through the tasks (0=ctr, 1=l2r, 2=follow, 3=ppp) unless ``task_ids`` is given;
    sequence lengths include 0 and the full length L.
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
    query = ids("query_token", n, Q) * (torch.rand(n, Q, generator=g) < 0.6)
    query[::2] = 0
    batch["query_tokens"] = query
    for key, vocab in (("item", "item"), ("item_shop", "shop"), ("item_brand", "brand"),
                       ("item_category", "category"), ("talent", "talent"), ("talent_category", "talent_category")):
        batch[key] = ids(vocab, n)
    batch["item_tags"] = ids("tag", n, K)
    batch["item_log_price"] = torch.randn(n, generator=g)
    batch["rank_features"] = torch.randn(n, F, generator=g)
    task_id = torch.tensor(task_ids) if task_ids is not None else torch.arange(n) % 4
    batch["task_id"] = task_id
    # Learnable labels: parity of the target's ids and of the user's age.
    click = (batch["item"] % 2 == 0).float()
    batch["label_click"] = click
    batch["label_cart"] = click * (batch["item_shop"] % 2 == 0).float()
    batch["label_buy"] = click * (batch["item_brand"] % 2 == 0).float()
    batch["label_follow"] = (batch["talent"] % 2 == 0).float()
    batch["label_tier"] = torch.where(task_id == 3, batch["user_age"] % 7, torch.full_like(task_id, -1))
    batch["l2r_weight"] = 1.0 + batch["label_cart"] + 2.0 * batch["label_buy"]
    batch["sample_weight"] = torch.ones(n)
    batch["group_id"] = task_id * 1000 + torch.arange(n) // 16  # 4 rows of one task per group
    return batch


@pytest.fixture()
def make_spec() -> Callable[..., ModelSpec]:
    return tiny_spec


@pytest.fixture()
def make_batch() -> Callable[..., Batch]:
    return random_batch
