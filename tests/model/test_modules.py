"""The parts of the user tower: frozen normalisation, item embeddings, the property-gated LSTM,
attention pooling."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from core.config import ModelConfig
from training.model import DUPNModel, build_model
from training.modules import (
    AttentionPooling, FrozenNorm, ItemEmbedding, PropertyGatedLSTM, RecencyPooling, category_profile)
from training.spec import ModelSpec

PROPERTY_KEYS = ("seq_behavior", "seq_scene", "seq_time_bucket")


def test_frozen_norm_uses_the_statistics_and_has_nothing_to_train() -> None:
    norm = FrozenNorm([1.0, -2.0], [4.0, 0.25], eps=0.0)
    x = torch.tensor([[3.0, -2.5], [1.0, 0.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[1.0, -1.0], [0.0, 4.0]]))
    assert list(norm.parameters()) == []
    assert set(norm.state_dict()) == {"mean", "inv_std"}
    scalar = FrozenNorm([2.0], [1.0], eps=0.0)
    torch.testing.assert_close(scalar(torch.tensor([[2.0, 3.0]])), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="last dimension of 2"):
        norm(torch.zeros(3, 5))


def test_item_embedding_embeds_slot_arrays_slot_by_slot() -> None:
    """Target items come as (N, G) slot arrays (tags (N, G, K)); each slot's vector is the item's own,
    and a padding slot (index 0 everywhere) embeds to zeros apart from its normalised price. The last
    column is the price relative to the category's mean price, normalised."""
    torch.manual_seed(0)
    cfg = ModelConfig(item_dim=5, shop_dim=3, brand_dim=3, category_dim=2, tag_dim=4)
    vocab = {"item": 20, "shop": 10, "brand": 10, "category": 6, "tag": 15}
    prices = torch.tensor([0.0, 1.5, 0.0, 3.0, 0.0, 0.0])
    emb = ItemEmbedding(vocab, cfg, {"item_log_price": FrozenNorm([1.0], [4.0], eps=0.0)}, prices,
                        FrozenNorm([0.0], [0.25], eps=0.0))
    assert emb.out_dim == 5 + 3 + 3 + 2 + 4 + 2
    item, shop = torch.tensor([[3, 7, 0]]), torch.tensor([[2, 4, 0]])
    brand, category = torch.tensor([[5, 5, 0]]), torch.tensor([[1, 3, 0]])
    tags, price = torch.tensor([[[4, 9, 0], [0, 0, 0], [0, 0, 0]]]), torch.tensor([[2.0, 0.0, 1.0]])
    grouped = emb(item, shop, brand, category, tags, price, "item_log_price").detach()
    assert grouped.shape == (1, 3, emb.out_dim)
    for s in range(3):
        alone = emb(item[:, s], shop[:, s], brand[:, s], category[:, s], tags[:, s], price[:, s], "item_log_price")
        torch.testing.assert_close(grouped[:, s], alone)
    torch.testing.assert_close(grouped[0, 0, 13:17], emb.tags.weight[[4, 9]].mean(0).detach())  # mean of the real tags
    assert torch.all(grouped[0, 1, 13:17] == 0)                                           # no tag
    assert torch.all(grouped[0, 2, :-2] == 0) and float(grouped[0, 2, -2]) == 0.0         # padding; (1 - 1) / 2
    assert grouped[0, :, -2].tolist() == [0.5, -0.5, 0.0]
    # relative price: (2.0 - 1.5) / 0.5 for category 1; an unknown price (0) is 0; category 0's mean is 0
    assert grouped[0, :, -1].tolist() == [1.0, 0.0, 2.0]
    with pytest.raises(KeyError, match="no price statistics 'seq_log_price'"):
        emb(item, shop, brand, category, tags, price, "seq_log_price")


def _lstm_from_equations(lstm: PropertyGatedLSTM, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The paper's equations, written against the module's named parameters."""
    h_dim = lstm.hidden
    w, b = lstm.gate_input.weight, lstm.gate_input.bias
    v = lstm.gate_property.weight if lstm.gate_property is not None else None
    u = lstm.recurrent.weight
    h = torch.zeros(x.shape[0], h_dim, dtype=x.dtype)
    c = torch.zeros_like(h)
    out = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w.T + h @ u[:3 * h_dim].T + b
        if v is not None:
            gates = gates + p[:, t] @ v.T
        i, f, o = torch.sigmoid(gates).split(h_dim, dim=-1)
        # The candidate: item input and previous state only.
        c_tilde = torch.tanh(x[:, t] @ lstm.candidate_input.weight.T + h @ u[3 * h_dim:].T
                             + lstm.candidate_input.bias)
        c = f * c + i * c_tilde
        h = o * torch.tanh(c)
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("use_property", [True, False])
def test_property_gated_lstm_matches_the_equations(use_property: bool) -> None:
    torch.manual_seed(0)
    lstm = PropertyGatedLSTM(input_dim=5, property_dim=3, hidden=6, use_property=use_property).double()
    x, p = torch.randn(4, 7, 5, dtype=torch.float64), torch.randn(4, 7, 3, dtype=torch.float64)
    expected = _lstm_from_equations(lstm, x, p)
    torch.testing.assert_close(lstm(x, p if use_property else None), expected)
    torch.testing.assert_close(lstm.forward_reference(x, p if use_property else None), expected)


def test_candidate_never_sees_the_property() -> None:
    torch.manual_seed(1)
    lstm = PropertyGatedLSTM(input_dim=5, property_dim=3, hidden=6, use_property=True)
    assert lstm.candidate_input.in_features == 5  # item width only
    assert lstm.gate_property is not None and lstm.gate_property.out_features == 3 * 6  # i, f, o only
    w_ih, _, _ = lstm._fused_weights()
    candidate_rows = w_ih[2 * 6:3 * 6]  # PyTorch's g (candidate) block
    assert torch.count_nonzero(candidate_rows[:, 5:]) == 0
    # With all gates forced open (i = f = o = 1) the property has no other way into the states.
    with torch.no_grad():
        lstm.gate_input.bias.fill_(50.0)
    x = torch.randn(2, 4, 5)
    p1, p2 = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    torch.testing.assert_close(lstm(x, p1), lstm(x, p2))


def test_lstm_gradients_reach_both_inputs() -> None:
    torch.manual_seed(2)
    lstm = PropertyGatedLSTM(input_dim=5, property_dim=3, hidden=6, use_property=True)
    x = torch.randn(2, 4, 5, requires_grad=True)
    p = torch.randn(2, 4, 3, requires_grad=True)
    lstm(x, p).sum().backward()
    assert x.grad is not None and p.grad is not None
    assert x.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_pooling_masks_padding_and_handles_empty_sequences(heads: int) -> None:
    torch.manual_seed(3)
    att = AttentionPooling(state_dim=6, property_dim=2, query_dim=3, user_dim=4, hidden=5, heads=heads)
    states = torch.randn(3, 5, 6, requires_grad=True)
    seq_len = torch.tensor([5, 2, 0])
    pooled, weights = att(states, seq_len, torch.randn(3, 3), torch.randn(3, 4), torch.randn(3, 5, 2))
    assert pooled.shape == (3, heads, 6) and weights.shape == (3, heads, 5)
    torch.testing.assert_close(weights.sum(dim=2), torch.tensor([1.0, 1.0, 0.0]).unsqueeze(1).expand(3, heads))
    assert torch.all(weights[1, :, 2:] == 0) and torch.all(weights[2] == 0)
    assert torch.all(pooled[2] == 0)
    # each head is its own distribution over the behaviours
    if heads > 1:
        assert not torch.allclose(weights[0, 0], weights[0, 1])
    pooled.sum().backward()
    assert states.grad is not None and torch.isfinite(states.grad).all()
    assert torch.all(states.grad[1, 2:] == 0)


def _model(spec: ModelSpec) -> DUPNModel:
    torch.manual_seed(0)
    return build_model(spec).eval()


def test_padding_changes_neither_representation_nor_attention(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., dict[str, torch.Tensor]]) -> None:
    model = _model(make_spec(property_in="all"))
    batch = make_batch(n=16, seed=4)
    out = model(batch)
    valid = torch.arange(7).unsqueeze(0) < batch["seq_len"].unsqueeze(1)
    changed = dict(batch)
    for key in ("seq_item", "seq_shop", "seq_brand", "seq_category") + PROPERTY_KEYS:
        changed[key] = torch.where(valid, batch[key], torch.full_like(batch[key], 3))
    changed["seq_log_price"] = torch.where(valid, batch["seq_log_price"], torch.full_like(batch["seq_log_price"], 9.0))
    changed["seq_tags"] = torch.where(valid.repeat_interleave(3, dim=1), batch["seq_tags"], 5)
    assert not torch.equal(changed["seq_item"], batch["seq_item"])
    out2 = model(changed)
    torch.testing.assert_close(out2["representation"], out["representation"])
    torch.testing.assert_close(out2["attention"], out["attention"])
    # Weights: 0 at padding, summing to 1 over valid positions, 0 everywhere for seq_len = 0.
    weights = out["attention"]
    assert torch.all(weights[~valid] == 0)
    has = batch["seq_len"] > 0
    torch.testing.assert_close(weights[has].sum(dim=1), torch.ones(int(has.sum())))
    empty = batch["seq_len"] == 0
    assert empty.any() and torch.all(weights[empty] == 0)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_batches_of_short_sequences_give_the_same_result(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., dict[str, torch.Tensor]]) -> None:
    """The tower skips steps after the batch's longest sequence; that must not change anything."""
    model = _model(make_spec(architecture="mmoe"))
    batch = make_batch(n=9, seed=7)
    batch["seq_len"] = batch["seq_len"].clamp(max=3)
    assert batch["seq_len"].max() == 3 < 7
    short = model(batch)
    longer = {k: torch.cat([v, make_batch(n=2, seed=8)[k][1:2]]) for k, v in batch.items()}
    assert longer["seq_len"][-1] == 7
    full = model(longer)
    assert short["attention"].shape == (9, 7)
    for key in ("representation", "attention", "ctr_logit", "ppp_logits"):
        torch.testing.assert_close(short[key], full[key][:9])


def _property_grads(model: DUPNModel) -> list[torch.Tensor | None]:
    if model.tower.properties is None:
        return []
    return [p.grad for p in model.tower.properties.parameters()]


def _changed_properties(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = dict(batch)
    for key in PROPERTY_KEYS:
        changed[key] = torch.where(batch[key] > 0, 2 + (batch[key] - 1) % 2, batch[key])
    return changed


@pytest.mark.parametrize("property_in,in_lstm,in_attention", [
    ("all", True, True), ("lstm", True, False), ("attention", False, True), ("none", False, False)])
def test_property_reaches_exactly_the_configured_places(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., dict[str, torch.Tensor]],
        property_in: str, in_lstm: bool, in_attention: bool) -> None:
    model = _model(make_spec(property_in=property_in))
    assert (model.tower.lstm.gate_property is not None) == in_lstm
    assert (model.tower.attention.property is not None) == in_attention
    batch = make_batch(n=16, seed=5)
    out = model(batch)
    out["representation"].sum().backward()
    grads = _property_grads(model)
    reached = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reached == (in_lstm or in_attention)
    if in_lstm and model.tower.lstm.gate_property is not None:
        v = model.tower.lstm.gate_property.weight.grad
        assert v is not None and v.abs().sum() > 0
    # Behaviourally: changing the behaviour type / scene / time bucket moves the representation
    # iff properties are used.
    moved = not torch.allclose(model(_changed_properties(batch))["representation"], out["representation"])
    assert moved == (in_lstm or in_attention)


def test_property_gradients_flow_through_the_lstm_gates_alone(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., dict[str, torch.Tensor]]) -> None:
    """property_in=lstm: the attention has no property input, so the gradient came through the gates."""
    model = _model(make_spec(property_in="lstm"))
    assert model.tower.attention.property is None
    model.tower(make_batch(n=8, seed=6))["representation"].sum().backward()
    assert model.tower.properties is not None
    for table in (model.tower.properties.behavior, model.tower.properties.scene, model.tower.properties.time_bucket):
        assert table.weight.grad is not None and table.weight.grad[1:].abs().sum() > 0
        assert torch.all(table.weight.grad[0] == 0)  # padding row never trained


def test_recency_pooling_weighs_behaviours_by_age_and_type_without_normalising() -> None:
    pool = RecencyPooling(buckets=5, pools=2, behaviors=4)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (1, 3, 2); the third is padding
    bucket = torch.tensor([[1, 4, 2]])
    valid = torch.tensor([[True, True, False]])
    behavior = torch.tensor([[2, 3, 2]])
    with torch.no_grad():
        pool.log_weight.copy_(torch.tensor([[0.0, 0.0, -1.0, -2.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]]))
        pool.behavior_log_weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -9.0, 1.0]]))
    pooled, log_mass = pool(keys, bucket, valid, behavior)
    w = torch.tensor([[1.0, float(torch.exp(torch.tensor(-3.0)))], [float(torch.exp(torch.tensor(-9.0))), 2.0]])
    w[1, 1] = min(float(torch.exp(torch.tensor(1.0))), float(torch.exp(torch.tensor(2.0))))  # capped at e^2
    torch.testing.assert_close(log_mass, torch.log1p(w.sum(dim=1)).unsqueeze(0))
    torch.testing.assert_close(pooled[0], w / w.sum(dim=1, keepdim=True))  # keys are the unit vectors
    with pytest.raises(ValueError, match="behaviour types"):
        pool(keys, bucket, valid)
    empty, none = pool(keys, bucket, torch.zeros_like(valid), behavior)
    assert (empty == 0).all() and (none == 0).all()


def test_a_pool_of_one_behaviour_type_counts_that_type_alone() -> None:
    pool = RecencyPooling(buckets=5, pools=2, only=(3,), behavior_vocab=4)
    assert pool.log_weight.shape == (3, 5)
    torch.testing.assert_close(pool.log_weight[2], pool.log_weight[1])  # starts as the slowest pool
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # the third is padding
    bucket, valid = torch.tensor([[1, 2, 1]]), torch.tensor([[True, True, False]])
    behavior = torch.tensor([[2, 3, 3]])
    w = pool.weights(bucket, valid, behavior)
    assert (w[0, 2] == torch.tensor([0.0, float(torch.exp(pool.log_weight[2, 2].detach())), 0.0])).all()
    assert (w[0, :2, :2] > 0).all()  # the other pools count both behaviours
    pooled, log_mass = pool(keys, bucket, valid, behavior)
    torch.testing.assert_close(pooled[0, 2], torch.tensor([0.0, 1.0]))  # the pool's only behaviour's key
    empty, none = pool(keys, bucket, valid, torch.tensor([[2, 2, 3]]))  # no behaviour of the type
    assert (empty[0, 2] == 0).all() and none[0, 2] == 0 and none[0, 0] > 0
    with pytest.raises(ValueError, match="behaviour types"):
        pool(keys, bucket, valid)
    with pytest.raises(ValueError, match="behaviour vocabulary"):
        RecencyPooling(buckets=5, pools=2, only=(3,))


def test_category_profile_counts_each_pools_decayed_behaviours_per_category() -> None:
    """Entry (b, r, c) is log(1 + pool r's weight summed over user b's behaviours in category c); padding and
    other users' behaviours add nothing; with fewer buckets than categories, index mod buckets."""
    w = torch.tensor([[[1.0, 0.5, 0.25, 0.0], [2.0, 2.0, 2.0, 0.0]],
                      [[3.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])  # (B=2, R=2, L=4): user 1 has one behaviour
    category = torch.tensor([[3, 1, 3, 2], [1, 0, 0, 0]])
    profile = category_profile(w, category, 4)
    expected = torch.zeros(2, 2, 4)
    expected[0, 0, 3], expected[0, 0, 1], expected[0, 1, 3], expected[0, 1, 1] = 1.25, 0.5, 4.0, 2.0
    expected[1, 0, 1], expected[1, 1, 1] = 3.0, 1.0
    torch.testing.assert_close(profile, torch.log1p(expected))
    folded = category_profile(w, category, 2)  # categories 1 and 3 share bucket 1
    torch.testing.assert_close(folded[0, 0], torch.log1p(torch.tensor([0.0, 1.75])))
