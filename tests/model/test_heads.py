"""Heads learn what they should from their own inputs, slot by slot."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.model.conftest import tiny_spec
from training.model import FollowHead, ItemHead, L2RHead
from training.modules import FrozenNorm, embedding

G = 4


def test_l2r_head_learns_a_ranking_when_features_have_a_non_zero_mean() -> None:
    """In training lists a relevant feature is shifted (lists are kept for their clicks); without
    the offset the pointwise loss would push its weight negative to produce the base rate."""
    gen = torch.Generator().manual_seed(0)
    n = 4000                                                          # n / G lists of G slots
    relevance = torch.randn(n, generator=gen) + 1.0                  # mean 1 after normalisation
    noise = torch.randn(n, 2, generator=gen)
    feats = torch.cat([relevance.unsqueeze(1), noise], dim=1).reshape(n // G, G, 3)
    clicked = (torch.rand(n, generator=gen) < torch.sigmoid(-2.0 + 0.8 * relevance)).float().reshape(n // G, G)
    head = L2RHead(in_dim=4, rank_dim=3, hidden=8, dropout=0.0, rank_norm=FrozenNorm([0.0] * 3, [1.0] * 3))
    task_in = torch.ones(n // G, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        score = head(task_in, feats)
        assert score.shape == (n // G, G)
        loss = F.softplus(-(2 * clicked - 1) * score).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = head.weights(task_in[:1])[0]
    assert out[0] > 0.3                  # the relevant feature's weight is positive
    assert out[-1] < -1.0                # the offset carries the low click rate
    assert abs(float(out[1])) < 0.2 and abs(float(out[2])) < 0.2


def test_l2r_offset_never_changes_a_ranking_within_a_list() -> None:
    torch.manual_seed(1)
    head = L2RHead(in_dim=5, rank_dim=3, hidden=8, dropout=0.0, rank_norm=FrozenNorm([0.5] * 3, [2.0] * 3)).eval()
    task_in, feats = torch.randn(6, 5), torch.randn(6, G, 3)
    out = head.weights(task_in)
    w, offset = out[:, :3], out[:, 3]
    expected = (w.unsqueeze(1) * (feats - 0.5) * torch.rsqrt(torch.tensor(2.0 + 1e-5))).sum(-1) + offset.unsqueeze(1)
    torch.testing.assert_close(head(task_in, feats), expected)


@pytest.mark.parametrize("with_rank", [True, False])
def test_item_head_scores_every_slot_as_if_alone(with_rank: bool) -> None:
    """(N, G) logits of a row of G slots equal G separate one-slot calls; slots do not see each other."""
    torch.manual_seed(2)
    norm = FrozenNorm([0.0] * 3, [1.0] * 3) if with_rank else None
    head = ItemHead(in_dim=6, item_dim=5, hidden=8, dropout=0.0, rank_norm=norm).eval()
    task_in, items, rank = torch.randn(3, 6), torch.randn(3, G, 5), torch.randn(3, G, 3)
    grouped = head(task_in, items, rank if with_rank else None)
    assert grouped.shape == (3, G)
    for s in range(G):
        alone = head(task_in, items[:, s:s + 1], rank[:, s:s + 1] if with_rank else None)
        torch.testing.assert_close(grouped[:, s:s + 1], alone)
    other = items.clone()
    other[:, 1:] = torch.randn(3, G - 1, 5)
    torch.testing.assert_close(head(task_in, other, rank if with_rank else None)[:, 0], grouped[:, 0])
    if with_rank:
        with pytest.raises(ValueError, match="rank_features"):
            head(task_in, items)


def test_follow_head_reads_the_category_table_it_is_given() -> None:
    torch.manual_seed(3)
    category = embedding(12, 4)
    head = FollowHead(in_dim=6, n_talent=20, talent_dim=5, category=category, hidden=8, dropout=0.0)
    assert head.category is category
    logit = head(torch.randn(4, 6), torch.tensor([2, 3, 4, 5]), torch.tensor([7, 7, 9, 0]))
    assert logit.shape == (4,)
    logit.sum().backward()
    grad = category.weight.grad
    assert grad is not None
    touched = grad.abs().sum(1) > 0
    assert touched.tolist() == [i in (7, 9) for i in range(12)]  # the given rows, never padding


@pytest.mark.parametrize("recency", [0, 2])
def test_representation_transfer_reads_the_interests_where_the_tower_writes_them(recency: int) -> None:
    """RT's match features use the published vector's interests block, the one the user tower writes
    (the behaviour-type prices that follow it do not make the vector opaque)."""
    from training.layout import published_layout
    from training.model import build_model
    from training.transfer import RepresentationTransfer

    spec = tiny_spec(recency_interests=recency)
    model = build_model(spec)
    interests = published_layout(model)[1].columns
    rt = RepresentationTransfer(model.embedding_dim, spec)
    assert rt.heads == spec.model.attention_heads + recency
    assert (np.arange(rt.dense_dim, rt.dense_dim + rt.heads * rt.interest_dim) == interests).all()


@pytest.mark.parametrize("recency,profile", [(0, 0), (2, 0), (2, 8)])
def test_representation_transfer_reads_from_the_published_vector_what_the_follow_head_reads(
        recency: int, profile: int) -> None:
    """RT's match features, computed from the published vector alone, are the tower's own category match
    (every interest's cosine, the pools' cosines times their mass, the profile's count and share in the
    shop's category) once its fresh category table equals the tower's; FT's shop head reads the same width."""
    from tests.model.conftest import random_batch
    from training.model import build_model
    from training.transfer import RepresentationTransfer, ShopPreferenceNet, tower_match

    torch.manual_seed(0)
    spec = tiny_spec(recency_interests=recency, category_profile=profile)
    model = build_model(spec).eval()
    batch = random_batch(16, seed=1)
    category = torch.randint(1, spec.vocab["category"], (16,))
    with torch.no_grad():
        rep = model.tower(batch)["representation"]
        expected = model.tower.match(rep, category.unsqueeze(1))[:, 0]
        rt = RepresentationTransfer(model.embedding_dim, spec)
        rt.head.category.weight.copy_(model.tower.items.category.weight)
        got = rt.match(rep, category)
    assert got.shape == (16, model.tower.category_match_dim)
    assert got.shape[1] == spec.model.attention_heads + 2 * recency + (2 * recency if profile else 0)
    torch.testing.assert_close(got, expected)
    if profile:  # the profile's part: no parameter, the same whatever the fresh table holds
        fresh = RepresentationTransfer(model.embedding_dim, spec).match(rep, category)
        torch.testing.assert_close(fresh[:, -2 * recency:], expected[:, -2 * recency:])
    ft = ShopPreferenceNet(model.tower, hidden=8, dropout=0.0)
    assert ft.head.match_dim == model.tower.category_match_dim
    match = tower_match(model.tower, rep, category)
    assert match is not None and match.shape == got.shape
    # transfer.price_match: the shop's price gaps to the user's behaviour types, RT's from the vector alone
    log_price = torch.rand(16) * 4 + 1
    log_price[0] = 0.0  # no price: no gap
    with torch.no_grad():
        rt = RepresentationTransfer(model.embedding_dim, spec, price_match=True)
        rt.head.category.weight.copy_(model.tower.items.category.weight)
        priced = tower_match(model.tower, rep, category, log_price)
        assert priced is not None
        torch.testing.assert_close(rt.match(rep, category, log_price), priced)
    gap, size = priced[:, expected.shape[1]:].chunk(2, dim=1)
    assert gap.shape[1] == model.tower.behaviour_prices > 0 and (gap[0] == 0).all()
    torch.testing.assert_close(size, gap.abs())
    assert ShopPreferenceNet(model.tower, 8, 0.0, price_match=True).head.match_dim == priced.shape[1] == \
        rt.head.match_dim
    batch_prices = {"embedding": rep, "shop": torch.ones(16, dtype=torch.long), "shop_category": category,
                    "shop_dense": torch.zeros(16, 3), "shop_log_price": log_price}
    assert rt.shop_logit(batch_prices).shape == (16,)


@pytest.mark.parametrize("head_input", ["full", "dense", "match"])
def test_shop_head_reads_the_part_of_the_representation_that_transfer_head_input_names(head_input: str) -> None:
    """transfer.head_input: the shop head's MLP reads every column (full), the dense part (dense) or no column
    (match) of the representation beside the match features; the columns it does not read cannot move its
    logit, the ones it reads can. RT (published vectors) and FT / RS / RA (a tower) read the same columns."""
    from training.model import build_model
    from training.transfer import RepresentationTransfer, ShopPreferenceNet

    torch.manual_seed(0)
    spec = tiny_spec(recency_interests=2, category_profile=8)
    model = build_model(spec).eval()
    rep_dim, dense = model.embedding_dim, spec.model.representation_dim
    reads = {"full": rep_dim, "dense": dense, "match": 0}[head_input]
    rt = RepresentationTransfer(rep_dim, spec, head_input=head_input).eval()
    ft = ShopPreferenceNet(model.tower, 8, 0.0, head_input=head_input).eval()
    assert rt.head.reads == ft.head.reads == reads
    batch = {"shop": torch.arange(1, 9), "shop_category": torch.randint(1, spec.vocab["category"], (8,)),
             "shop_dense": torch.randn(8, 3)}
    rep, match = torch.randn(8, rep_dim), torch.randn(8, rt.head.match_dim)
    with torch.no_grad():
        base = rt.head(rep, batch, match)
        unread = rep.clone()
        unread[:, reads:] += 5.0
        torch.testing.assert_close(rt.head(unread, batch, match), base)
        if reads:
            read = rep.clone()
            read[:, :reads] += 5.0
            assert not torch.allclose(rt.head(read, batch, match), base)
        assert not torch.allclose(rt.head(rep, batch, match + 5.0), base)
    d = spec.model.shop_dim + spec.model.category_dim + 3  # the shop features
    first = rt.head.mlp[0]
    assert isinstance(first, torch.nn.Linear)
    assert first.in_features == (reads + d if reads else 0) + d + rt.head.match_dim  # r, s, (P·r) ⊙ s, match


def test_shop_head_refuses_a_partial_read_of_vectors_without_a_known_layout() -> None:
    """Opaque vectors (not the spec's width) have no dense part or match features to read: head_input other
    than full is refused, naming the key and the fix."""
    from core.errors import PlatformError
    from training.model import build_model
    from training.transfer import RepresentationTransfer

    spec = tiny_spec(recency_interests=2)
    opaque = build_model(spec).embedding_dim + 1
    assert RepresentationTransfer(opaque, spec, head_input="full").head.reads == opaque
    for head_input in ("dense", "match"):
        with pytest.raises(PlatformError, match=f"transfer.head_input={head_input} .*set transfer.head_input=full"):
            RepresentationTransfer(opaque, spec, head_input=head_input)


def test_a_follow_head_without_talent_ids_reads_the_talents_category_alone() -> None:
    from tests.model.conftest import random_batch
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_spec(talent_dim=0)).eval()
    assert model.heads["follow"].talent is None
    batch = random_batch(12, seed=5)
    other = {**batch, "talent": torch.where(batch["kind_id"] == 1, 3 + batch["talent"] % 7, batch["talent"])}
    torch.testing.assert_close(model(other)["follow_logit"], model(batch)["follow_logit"])
    with_ids = build_model(tiny_spec(talent_dim=6)).eval()
    moved = (with_ids(other)["follow_logit"] - with_ids(batch)["follow_logit"]).abs() > 1e-6
    assert bool(moved[batch["kind_id"] == 1].any())


def test_a_follow_head_without_its_task_input_reads_the_talent_and_the_match_features_alone() -> None:
    torch.manual_seed(0)
    category = embedding(12, 4)
    head = FollowHead(in_dim=6, n_talent=20, talent_dim=5, category=category, hidden=8, dropout=0.0, match_dim=3,
                      task_input=False)
    talent, cat, match = torch.tensor([3, 4, 5]), torch.tensor([2, 2, 7]), torch.rand(3, 3)
    out = head(torch.randn(3, 6), talent, cat, match)
    torch.testing.assert_close(head(torch.randn(3, 6), talent, cat, match), out)
    assert not torch.allclose(head(torch.randn(3, 6), talent, cat, match + 1.0), out)
    with_input = FollowHead(in_dim=6, n_talent=20, talent_dim=5, category=category, hidden=8, dropout=0.0,
                            match_dim=3)
    assert not torch.allclose(with_input(torch.randn(3, 6), talent, cat, match),
                              with_input(torch.randn(3, 6), talent, cat, match))
