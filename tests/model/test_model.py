"""The whole model: every multi-task design trains, the serving split agrees, the spec round-trips."""
from __future__ import annotations

import json
from typing import Callable

import pytest
import torch

from core.config import Config
from core.errors import ConfigError
from training.losses import task_losses
from training.model import DUPNModel, build_model, last_shared_layer
from training.spec import ModelSpec

ARCHITECTURES = ("shared_bottom", "mmoe", "cgc", "ple", "cross_stitch")
Batch = dict[str, torch.Tensor]


def _total(model: DUPNModel, batch: Batch) -> torch.Tensor:
    losses = task_losses(model(batch), batch, model.spec.loss_names)
    return torch.stack(list(losses.values())).sum()


@pytest.mark.parametrize("esmm", [True, False])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_design_trains(make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
                             architecture: str, esmm: bool) -> None:
    spec = make_spec(architecture=architecture, esmm=esmm, dropout=0.1)
    torch.manual_seed(0)
    model = build_model(spec)
    assert ("cvr" in model.heads) == esmm
    batch = make_batch(n=48, seed=1)
    out = model(batch)
    assert ("ctcvr_prob" in out) == esmm
    assert out["representation"].shape == (48, spec.model.representation_dim)
    assert out["ppp_logits"].shape == (48, 7)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with torch.no_grad():
        before = float(_total(model.eval(), batch))
    model.train()
    for _ in range(25):
        opt.zero_grad()
        loss = _total(model, batch)
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        opt.step()
    with torch.no_grad():
        after = float(_total(model.eval(), batch))
    assert after < 0.8 * before, (before, after)


def test_heads_exist_only_for_enabled_tasks(make_spec: Callable[..., ModelSpec],
                                            make_batch: Callable[..., Batch]) -> None:
    model = build_model(make_spec(tasks=("l2r", "ppp"), esmm=True))
    assert set(model.heads) == {"l2r", "ppp"}
    assert model.spec.loss_names == ("l2r", "ppp")
    batch = make_batch(n=8)
    for key in ("item", "item_tags", "talent"):
        del batch[key]
    out = model(batch)
    assert "ctr_logit" not in out and "follow_logit" not in out and "l2r_score" in out


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_serving_split_agrees_with_the_full_model(make_spec: Callable[..., ModelSpec],
                                                  make_batch: Callable[..., Batch], architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec(architecture=architecture, dropout=0.3)).eval()
    batch = make_batch(n=24, seed=2)
    batch["query_tokens"] = torch.zeros_like(batch["query_tokens"])  # no query at serving
    full = model(batch)
    user_keys = {k: v for k, v in batch.items() if k.startswith(("seq_", "user_"))}
    representation, ppp_probs = model.user_part()(user_keys)
    torch.testing.assert_close(representation, full["representation"])
    torch.testing.assert_close(ppp_probs, torch.softmax(full["ppp_logits"], dim=-1))
    torch.testing.assert_close(ppp_probs.sum(dim=1), torch.ones(24))
    item_keys = {k: v for k, v in batch.items() if k.startswith("item")}
    torch.testing.assert_close(model.score_items(representation, item_keys), torch.sigmoid(full["ctr_logit"]))


def test_user_part_ignores_the_query_and_is_uniform_without_ppp(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec(tasks=("ctr", "l2r"))).eval()
    batch = make_batch(n=10, seed=3)
    assert batch["query_tokens"].any()
    with_query = model(batch)["representation"]
    no_query = model({**batch, "query_tokens": torch.zeros_like(batch["query_tokens"])})["representation"]
    assert not torch.allclose(with_query, no_query)
    representation, ppp_probs = model.user_part()(batch)
    torch.testing.assert_close(representation, no_query)
    torch.testing.assert_close(ppp_probs, torch.full((10, 7), 1 / 7))


def test_user_part_shares_parameters(make_spec: Callable[..., ModelSpec]) -> None:
    model = build_model(make_spec())
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in model.user_part().parameters()} <= model_params
    assert {id(p) for p in model.item_scorer().parameters()} <= model_params


def test_last_shared_layer_gets_gradient_from_every_loss(make_spec: Callable[..., ModelSpec],
                                                         make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec(architecture="mmoe"))
    (shared,) = last_shared_layer(model)
    assert shared is model.tower.projection.weight
    batch = make_batch(n=32)
    losses = task_losses(model(batch), batch, model.spec.loss_names)
    assert set(losses) == {"ctr", "ctcvr", "l2r", "follow", "ppp"}
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss, [shared], retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_spec_round_trips_through_json_and_rebuilds_the_same_model(make_spec: Callable[..., ModelSpec],
                                                                   make_batch: Callable[..., Batch]) -> None:
    spec = ModelSpec(**{**make_spec(architecture="ple").__dict__,
                        "norm": {"rank_features": ([0.5] * 4, [2.0] * 4), "item_log_price": ([3.0], [0.5])}})
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.norm["user_dense"] == ([0.0] * 4, [1.0] * 4)  # default for a missing entry
    torch.manual_seed(0)
    model = build_model(spec).eval()
    clone = build_model(again).eval()
    clone.load_state_dict(model.state_dict())
    batch = make_batch(n=8)
    torch.testing.assert_close(clone(batch)["ctr_logit"], model(batch)["ctr_logit"])
    assert torch.equal(model.state_dict()["heads.l2r.rank_norm.mean"], torch.full((4,), 0.5))


def test_spec_rejects_bad_input(make_spec: Callable[..., ModelSpec]) -> None:
    base = make_spec().__dict__
    with pytest.raises(ConfigError, match="unknown tasks"):
        ModelSpec(**{**base, "tasks": ("ctr", "clicks")})
    with pytest.raises(ConfigError, match="expected 4 of each"):
        ModelSpec(**{**base, "norm": {"rank_features": ([0.0], [1.0])}})
    with pytest.raises(ConfigError, match="unknown inputs"):
        ModelSpec(**{**base, "norm": {"price": ([0.0], [1.0])}})
    with pytest.raises(ConfigError, match="version"):
        ModelSpec.from_dict({**make_spec().to_dict(), "version": 99})


def test_spec_from_config_uses_the_configured_sizes() -> None:
    cfg = Config()
    spec = ModelSpec.from_config(cfg, tasks=["ppp", "ctr"])
    assert spec.tasks == ("ctr", "ppp")
    assert spec.loss_names == ("ctr", "ctcvr", "ppp")
    assert spec.vocab["item"] == cfg.sequences.hash_buckets.item_id
    assert spec.max_len == cfg.sequences.max_len and spec.rank_dim == cfg.inputs.rank_features_dim
    assert spec.model == cfg.training.model


def test_a_model_trained_with_another_encoding_is_refused() -> None:
    from core.errors import PlatformError
    from training.spec import check_encoding

    cfg = Config()
    spec = ModelSpec.from_config(cfg)
    check_encoding(spec, cfg.sequences, "3")                          # same settings: fine
    other = cfg.sequences.model_copy(update={
        "max_len": 50, "hash_buckets": cfg.sequences.hash_buckets.model_copy(update={"shop_id": 1024})})
    with pytest.raises(PlatformError) as info:
        check_encoding(spec, other, "3")
    assert str(info.value) == (
        f"model version 3 was trained with another sequence encoding than the config (model vs config: shop "
        f"{spec.vocab['shop']} vs 1024, max_len {spec.max_len} vs 50): use the sequences settings it was trained "
        f"with, or train a new version")
