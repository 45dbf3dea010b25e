"""The whole model: every multi-task design trains, slots are scored independently of their grouping,
the serving split agrees, the spec round-trips."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch

from core.config import Config
from core.errors import ConfigError
from core.tables import KIND_IDS
from features.encoding import BEHAVIOR_INDEX
from tests.model.conftest import G, random_batch, tiny_spec
from training.evaluation import auc as auc_of
from training.losses import task_losses
from training.model import (
    FOLLOW_PRIOR_DIM, ITEM_PRIOR_DIM, PRIOR_COUNT_KNOTS, PRIOR_RATE_KNOTS, DUPNModel, GateStats, TaskModel, UserTower,
    attach_gate_stats, build_model, last_shared_layer, rows_of_kind, scatter_rows)
from training.spec import SPEC_VERSION, ModelSpec

ARCHITECTURES = ("shared_bottom", "mmoe", "cgc", "ple", "cross_stitch")
FAMILIES = ("dupn", "cnn_max", "dssm", "wide", "wide_deep")
Batch = dict[str, torch.Tensor]
SLOT_OUTPUTS = ("ctr_logit", "cvr_logit", "l2r_score")
# slot columns and the width of each slot's entry (None: one value per slot)
SLOT_WIDTHS = {"item": None, "item_shop": None, "item_brand": None, "item_category": None, "item_tags": 3,
               "item_log_price": None, "item_query_share": None, "rank_features": 4, "label_click": None,
               "label_cart": None, "label_buy": None, "ctr_weight": None, "l2r_gain": None}


def _slots(x: torch.Tensor) -> torch.Tensor:
    """A slot column as (B, G) or (B, G, width)."""
    return x if x.shape[1] == G else x.reshape(x.shape[0], G, x.shape[1] // G)


def _small(family: str, **model: object) -> ModelSpec:
    return tiny_spec(family=family, cnn_channels=8, cnn_kernel_sizes=[2, 3], **model)


def _total(model: DUPNModel, batch: Batch) -> torch.Tensor:
    losses = task_losses(model(batch), batch, model.spec.loss_names)
    return torch.stack(list(losses.values())).sum()


@pytest.mark.parametrize("esmm,recency", [(True, 0), (False, 0), (True, 2)])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_design_trains(make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch],
                             architecture: str, esmm: bool, recency: int) -> None:
    spec = make_spec(architecture=architecture, esmm=esmm, dropout=0.1, recency_interests=recency)
    torch.manual_seed(0)
    model = build_model(spec)
    assert ("cvr" in model.heads) == esmm
    batch = make_batch(n=48, seed=1)
    out = model(batch)
    assert ("cvr_logit" in out) == esmm
    assert out["representation"].shape == (48, model.embedding_dim)
    assert out["ctr_logit"].shape == out["l2r_score"].shape == (48, G)
    assert out["follow_logit"].shape == (48,) and out["ppp_logits"].shape == (48, 7)
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
    # without the follow head, talents are not read (L2R reads the ranking features, the target items
    # for its item score and their category and tags for its match features)
    del batch["talent"]
    out = model(batch)
    assert "ctr_logit" not in out and "follow_logit" not in out and "l2r_score" in out


@pytest.mark.parametrize("architecture,recency", [(a, 0) for a in ARCHITECTURES] + [("shared_bottom", 2)])
def test_serving_split_agrees_with_the_full_model(make_spec: Callable[..., ModelSpec],
                                                  make_batch: Callable[..., Batch], architecture: str,
                                                  recency: int) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(**{**make_spec(architecture=architecture, dropout=0.3, recency_interests=recency).__dict__,
                        "logit_offsets": {"ctr": -1.5}})
    model = build_model(spec).eval()
    assert isinstance(model, DUPNModel)
    batch = make_batch(n=24, seed=2)
    batch["query_tokens"] = torch.zeros_like(batch["query_tokens"])  # no query at serving
    full = model(batch)
    user_keys = {k: v for k, v in batch.items() if k.startswith(("seq_", "user_"))}
    representation, ppp_probs = model.user_part()(user_keys)
    torch.testing.assert_close(representation, full["representation"])
    torch.testing.assert_close(ppp_probs, torch.softmax(full["ppp_logits"], dim=-1))
    torch.testing.assert_close(ppp_probs.sum(dim=1), torch.ones(24))
    # the item scorer reads one candidate per row: every real slot, with its user's representation
    real = torch.arange(G).unsqueeze(0) < batch["n_items"].unsqueeze(1)
    row = torch.arange(24).unsqueeze(1).expand(-1, G)[real]
    candidates = {k: _slots(batch[k])[real] for k in ("item", "item_shop", "item_brand", "item_category",
                                                      "item_tags", "item_log_price", "rank_features")}
    scored = model.score_items(representation[row], candidates)
    assert scored.shape == (int(real.sum()),)
    torch.testing.assert_close(scored, torch.sigmoid(full["ctr_logit"][real] - 1.5))  # with the sampling offset


@pytest.mark.parametrize("recency", [0, 2])
def test_scoring_users_sorted_by_length_gives_each_user_the_same_outputs(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch], recency: int) -> None:
    """The nightly job's passes of similar-length users (``inference.score_by_length``) return what one
    pass over the whole batch returns, row for row, and each pass runs only its own longest length."""
    from training.inference import score_by_length

    torch.manual_seed(0)
    part = build_model(make_spec(recency_interests=recency)).eval().user_part()
    batch = {k: v for k, v in make_batch(n=37, seed=5).items() if k.startswith(("seq_", "user_"))}
    with torch.no_grad():
        whole = part(batch)
        passes: list[torch.Tensor] = []
        spy = lambda b: passes.append(b["seq_len"]) or part(b)  # noqa: E731
        rep, probs = score_by_length(spy, batch, 8)
    torch.testing.assert_close(rep, whole[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs, whole[1], rtol=1e-5, atol=1e-6)
    assert [len(p) for p in passes] == [8, 8, 8, 8, 5]
    assert all(int(a.max()) <= int(b.min()) for a, b in zip(passes, passes[1:]))  # sorted: short passes first
    assert sorted(torch.cat(passes).tolist()) == sorted(batch["seq_len"].tolist())


def test_a_scoring_task_writes_each_pass_to_its_users_rows_sorted_by_user_id(
        make_spec: Callable[..., ModelSpec], make_batch: Callable[..., Batch], tmp_path: Path) -> None:
    """The nightly job's task (``inference._score_unit``) over a file of two row groups, in Arrow batches
    of 16 and passes of 8 sorted by length, writes the outputs of one pass over all users, each at its
    user's row of the file sorted by user_id (each pass goes straight to its users' rows), and its seconds
    per phase."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.inference import TASK_PHASES, USER_INPUTS, _score_unit
    from training.trainer import dump_state

    torch.manual_seed(0)
    model = build_model(make_spec(recency_interests=2)).eval()
    batch = {k: v for k, v in make_batch(n=37, seed=5).items() if k in USER_INPUTS}
    ids = np.random.default_rng(1).permutation(1000)[:37]  # the file's rows are not in user_id order
    pq.write_table(pa.table({"user_id": ids, **{k: (v.numpy() if v.dim() == 1 else list(v.numpy()))
                                                for k, v in batch.items()}}), tmp_path / "seq.parquet",
                   row_group_size=20)

    class State:
        value = dump_state(model)

    stats = _score_unit((0, str(tmp_path / "seq.parquet"), [0, 1]), State, "test", str(tmp_path / "out"), "m", "1",
                        batch_size=16, forward_batch=8, row_group_bytes=0)
    out = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    with torch.no_grad():
        rep, probs = model.user_part()(batch)
    order = np.argsort(ids)
    assert stats["rows"] == 37 and out.column("user_id").to_pylist() == sorted(ids.tolist())
    assert all(stats[phase] > 0 for phase in TASK_PHASES)  # the task's seconds per phase
    np.testing.assert_allclose(np.stack(out.column("embedding").to_numpy(zero_copy_only=False)),
                               rep.numpy()[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(out.column("ppp_probs").to_numpy(zero_copy_only=False)),
                               probs.numpy()[order], rtol=1e-5, atol=1e-6)


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
                        "norm": {"rank_features": ([0.5] * 4, [2.0] * 4), "item_log_price": ([3.0], [0.5])},
                        "logit_offsets": {"ctr": math.log(0.1 / 2.0), "follow": -0.5}})
    stored = spec.to_dict()
    assert stored["version"] == SPEC_VERSION == 2
    again = ModelSpec.from_dict(json.loads(json.dumps(stored)))
    assert again == spec
    assert again.offset("ctr") == pytest.approx(math.log(0.05)) and again.offset("ppp") == 0.0
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
    old = {k: v for k, v in make_spec().to_dict().items() if k != "logit_offsets"}
    with pytest.raises(ConfigError, match="version 1 is not supported"):   # a spec of the old layout
        ModelSpec.from_dict({**old, "version": 1})
    with pytest.raises(ConfigError, match=r"missing keys \['logit_offsets'\]"):
        ModelSpec.from_dict(old)
    for bad in ({"ppp": 1.0}, {"ctr": math.inf}):
        with pytest.raises(ConfigError, match="logit_offsets"):
            ModelSpec(**{**base, "logit_offsets": bad})


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


# ---------------------------------------------------------------------- the group layout
def _one_row_per_slot(batch: Batch) -> tuple[Batch, list[tuple[int, int]]]:
    """The impression slots of ``batch`` as one row each (the same user, the item in slot 0, the rest
    padding), and the (row, slot) of the grouped batch each new row comes from."""
    origin = [(r, s) for r in range(len(batch["n_items"])) for s in range(int(batch["n_items"][r]))]
    rows = torch.tensor([r for r, _ in origin])
    slots = torch.tensor([s for _, s in origin])
    out: Batch = {}
    for key, value in batch.items():
        if key not in SLOT_WIDTHS:
            out[key] = value[rows]
            continue
        picked = _slots(value)[rows, slots]                          # (N,) or (N, width)
        single = torch.zeros_like(_slots(value)[rows])               # (N, G) or (N, G, width)
        single[:, 0] = picked
        out[key] = single.reshape(len(origin), -1)
    out["n_items"] = torch.ones(len(origin), dtype=torch.long)
    return out, origin


@pytest.mark.parametrize("family,architecture", [(f, "shared_bottom") for f in FAMILIES] + [("dupn", "ple")])
def test_grouped_and_one_row_per_example_layouts_give_identical_outputs(family: str, architecture: str) -> None:
    """A row of G items is scored as G rows of one item each built from the same user: the impression
    heads score every slot on its own, so the grouped layout changes no prediction."""
    torch.manual_seed(0)
    model = build_model(_small(family, architecture=architecture)).eval()
    batch = random_batch(n=12, seed=4, kinds=[KIND_IDS["impressions"]] * 12)
    assert int(batch["n_items"].sum()) > 12                    # some rows hold several items
    split, origin = _one_row_per_slot(batch)
    with torch.no_grad():
        grouped, single = model(batch), model(split)
    keys = [k for k in SLOT_OUTPUTS if k in grouped]
    assert keys == ["ctr_logit", "cvr_logit", "l2r_score"]
    for key in keys:
        assert grouped[key].shape == (12, G)
        expected = torch.stack([grouped[key][r, s] for r, s in origin])
        torch.testing.assert_close(single[key][:, 0], expected, atol=1e-5, rtol=1e-5)
    rows = torch.tensor([r for r, _ in origin])
    torch.testing.assert_close(single["representation"], grouped["representation"][rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single["ppp_logits"], grouped["ppp_logits"][rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_of_other_kinds_get_zeros(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(_small(family)).eval()
    batch = random_batch(n=15, seed=5)
    with torch.no_grad():
        out = model(batch)
    imp = batch["n_items"] > 0
    follow = batch["kind_id"] == KIND_IDS["follow"]
    assert imp.any() and (~imp).any() and follow.any()
    for key in SLOT_OUTPUTS:
        assert out[key].shape == (15, G)
        assert torch.all(out[key][~imp] == 0), key
        assert torch.all(out[key][imp] != 0), key                  # computed (padding slots too) where items are
    assert torch.all(out["follow_logit"][~follow] == 0) and torch.all(out["follow_logit"][follow] != 0)
    assert out["ppp_logits"].shape == (15, 7) and torch.all(out["ppp_logits"].abs().sum(1) > 0)  # every user


def test_other_rows_and_padding_slots_do_not_change_a_rows_predictions() -> None:
    """Each impression row's slots are scored from its own user and items only."""
    torch.manual_seed(0)
    model = build_model(tiny_spec(architecture="mmoe")).eval()
    batch = random_batch(n=12, seed=6)
    with torch.no_grad():
        base = model(batch)
    changed = dict(batch)
    real = torch.arange(G).unsqueeze(0) < batch["n_items"].unsqueeze(1)
    for key in ("item", "item_shop", "item_brand", "item_category"):
        changed[key] = torch.where(real, batch[key], torch.full_like(batch[key], 5))
    price = batch["item_log_price"]
    changed["item_log_price"] = torch.where(real, price, torch.full_like(price, 3.0))
    with torch.no_grad():
        after = model(changed)
    for key in SLOT_OUTPUTS:
        torch.testing.assert_close(after[key][real], base[key][real])
    # dropping every other row leaves the remaining rows' outputs as they were
    keep = torch.arange(0, 12, 2)
    with torch.no_grad():
        half = model({k: v[keep] for k, v in batch.items()})
    for key in (*SLOT_OUTPUTS, "follow_logit", "ppp_logits", "representation"):
        torch.testing.assert_close(half[key], base[key][keep], atol=1e-6, rtol=1e-5)


def test_the_follow_head_shares_the_item_category_table(make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    assert isinstance(model, DUPNModel)
    follow = model.heads["follow"]
    assert follow.category is model.tower.items.category
    assert follow.category.weight is model.tower.items.category.weight
    assert follow.category.weight.data_ptr() == model.tower.items.category.weight.data_ptr()
    names = [n for n, p in model.named_parameters() if p is model.tower.items.category.weight]
    assert names == ["tower.items.category.weight"]               # one parameter, counted once
    # the follow loss alone trains the table at the talents' categories
    batch = make_batch(n=12, kinds=[KIND_IDS["follow"]] * 12)
    task_losses(model(batch), batch, ["follow"])["follow"].backward()
    grad = model.tower.items.category.weight.grad
    assert grad is not None
    touched = set(torch.nonzero(grad.abs().sum(1) > 0).squeeze(1).tolist())
    assert set(batch["talent_category"].tolist()) <= touched and 0 not in touched
    state = model.state_dict()
    assert torch.equal(state["heads.follow.category.weight"], state["tower.items.category.weight"])


def test_rows_of_kind_and_scatter_rows() -> None:
    batch = {"kind_id": torch.tensor([0, 1, 2, 0, 1]), "n_items": torch.tensor([2, 0, 0, 0, 0])}
    # impression rows are those that hold items (an impression row with no item left has nothing to score)
    assert rows_of_kind(batch, "impressions").tolist() == [0]
    assert rows_of_kind(batch, "follow").tolist() == [1, 4] and rows_of_kind(batch, "ppp").tolist() == [2]
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    out = scatter_rows(values, torch.tensor([3, 1]), 5)
    assert out.tolist() == [[0, 0], [3, 4], [0, 0], [1, 2], [0, 0]]
    (out * torch.arange(10.0).reshape(5, 2)).sum().backward()
    assert values.grad is not None and values.grad.tolist() == [[6.0, 7.0], [2.0, 3.0]]
    assert scatter_rows(values[:0], torch.zeros(0, dtype=torch.long), 3).shape == (3, 2)


# ---------------------------------------------------------------------- expert utilisation
@pytest.mark.parametrize("architecture,gates", [
    ("mmoe", {"gate_ctr", "gate_cvr", "gate_l2r", "gate_follow", "gate_ppp"}),
    ("cgc", {"gate_ctr", "gate_cvr", "gate_l2r", "gate_follow", "gate_ppp"}),
    ("ple", {f"level{i}_gate_{h}" for i in (1, 2) for h in ("ctr", "cvr", "l2r", "follow", "ppp")}
     | {"level1_gate_shared"}),
    ("shared_bottom", set())])
def test_gate_stats_record_the_mean_gate_weight_of_every_gate(architecture: str, gates: set[str]) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(architecture=architecture)).eval()
    stats = GateStats()
    attach_gate_stats(model, stats)
    b1, b2 = random_batch(n=10, seed=1), random_batch(n=6, seed=2)
    with torch.no_grad():
        model(b1)
        model(b2)
    result = stats.result()
    assert set(result) == gates
    for name, weights in result.items():
        assert stats.counts[name] == 16
        assert math.isclose(sum(weights), 1.0, rel_tol=1e-6) and all(0 < w < 1 for w in weights), name
    attach_gate_stats(model, None)
    with torch.no_grad():
        model(b1)                                                # detached: nothing more recorded
    assert all(stats.counts[k] == 16 for k in gates)
    assert all(m.gate_stats is None for m in model.modules() if hasattr(m, "gate_stats"))


def test_gate_stats_flag_a_collapsed_gate() -> None:
    stats = GateStats()
    stats.add("gate_ctr", torch.tensor([[0.95, 0.05, 0.0], [0.93, 0.03, 0.04]]))
    stats.add("gate_ppp", torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]))
    assert stats.result()["gate_ppp"] == pytest.approx([0.35, 0.3, 0.35])
    assert stats.collapsed() == ["gate_ctr"]


def test_mmoe_gate_stats_average_the_softmax_of_the_gates() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(architecture="mmoe")).eval()
    stats = GateStats()
    attach_gate_stats(model, stats)
    batch = random_batch(n=8, seed=3)
    with torch.no_grad():
        rep = model(batch)["representation"]
        expected = torch.softmax(model.mixer.gates["follow"](rep), dim=-1).double().mean(0)
    assert stats.result()["gate_follow"] == pytest.approx(expected.tolist(), rel=1e-5)


def _first_category_match(model: DUPNModel, n: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A random batch, its time-decay pools' weights (B, P, L) over the longest sequence, and each row's match
    features (B, category_match_dim) against the category of its first behaviour (``seq_category[:, :1]``)."""
    tower = model.tower
    assert isinstance(tower, UserTower) and tower.recency is not None
    batch = random_batch(n=n, seed=seed)
    with torch.no_grad():
        rep = model.eval()(batch)["representation"]
        longest = int(batch["seq_len"].max())
        w = tower.recency.weights(batch["seq_time_bucket"][:, :longest],
                                  torch.arange(longest).unsqueeze(0) < batch["seq_len"].unsqueeze(1))
        match = tower.match(rep, batch["seq_category"][:, :1])[:, 0]
    return batch, w, match


def test_category_profile_gives_heads_the_exact_decayed_count_in_the_targets_category() -> None:
    """With C buckets >= the category vocabulary, the representation grows by P·C columns (a block of its
    own in the published layout) and each item's match features end with every pool's log decayed count
    of the user's behaviours in exactly the item's category, and its share of the pool's mass."""
    torch.manual_seed(0)
    pools, buckets = 2, 12
    plain = build_model(tiny_spec(recency_interests=pools))
    profiled = build_model(tiny_spec(recency_interests=pools, category_profile=buckets))
    assert isinstance(profiled, DUPNModel) and isinstance(plain, DUPNModel)
    tower = profiled.tower
    assert isinstance(tower, UserTower)
    assert profiled.embedding_dim - plain.embedding_dim == pools * buckets
    assert tower.match_dim - plain.tower.match_dim == 2 * pools  # type: ignore[union-attr]
    assert profiled.mixer_in == plain.embedding_dim  # the task mixer reads all but the profile
    from training.layout import published_layout
    blocks = {b.key: b.columns for b in published_layout(profiled)}
    assert list(blocks["profile"]) == list(range(profiled.embedding_dim - pools * buckets, profiled.embedding_dim))
    batch, w, match = _first_category_match(profiled, 6, 5)
    n, target = w.shape[2], batch["seq_category"][:, :1]
    in_target = (w * (batch["seq_category"][:, :n] == target).unsqueeze(1)).sum(dim=2)  # (B, P)
    count, share = match[:, -2 * pools:-pools], match[:, -pools:]
    torch.testing.assert_close(count, torch.log1p(in_target))
    torch.testing.assert_close(share, in_target / w.sum(dim=2).clamp_min(1e-6), atol=1e-5, rtol=1e-4)
    assert (in_target > 0).any() and (in_target == 0).any()  # the batch has rows of both kinds


def test_every_model_is_a_task_model() -> None:
    for family in FAMILIES:
        model = build_model(_small(family))
        assert isinstance(model, TaskModel) and model.spec.model.family == family


def test_recency_interests_add_pools_masses_and_match_features() -> None:
    """With P time-decay pools the representation grows by P interests and P masses, the item heads
    read 2(K + P) + P match features and the follow head K + 2P; a user's pools see only their own
    behaviours' ages (changing another row's ages changes nothing)."""
    torch.manual_seed(0)
    base, recent = build_model(tiny_spec()), build_model(tiny_spec(recency_interests=2, recency_by_behavior=True))
    assert isinstance(base, DUPNModel) and isinstance(recent, DUPNModel)
    tower, k = recent.tower, base.tower.heads  # type: ignore[union-attr]
    assert isinstance(tower, UserTower)
    assert recent.embedding_dim - base.embedding_dim == 2 * tower.interest_dim + 2
    assert (tower.match_dim, tower.category_match_dim) == (2 * (k + 2) + 2, k + 4)
    batch = random_batch(n=10, seed=3)
    rep = recent.eval()(batch)["representation"]
    masses = rep[:, -2:]
    # log(1 + mass): 0 exactly for a user without behaviours, > 0 for one with
    assert torch.all(masses[batch["seq_len"] == 0] == 0) and torch.all(masses[batch["seq_len"] > 0] > 0)
    changed = dict(batch)
    changed["seq_time_bucket"] = batch["seq_time_bucket"].clone()
    # row 1 holds a full sequence: make all of its behaviours old
    changed["seq_time_bucket"][1] = torch.where(batch["seq_time_bucket"][1] > 0, 8, 0)
    with torch.no_grad():
        after = recent(changed)["representation"]
    others = torch.arange(10) != 1
    torch.testing.assert_close(after[others], rep[others].detach())
    assert torch.all(after[1, -2:] < masses[1])  # older behaviours weigh less in every pool


def test_the_purchase_pool_adds_a_pool_of_the_purchases_alone() -> None:
    """model.purchase_pool: one more pool (an interest, a mass, a profile row and their match features) whose
    profile counts the user's purchases per category and nothing else."""
    torch.manual_seed(0)
    plain = build_model(tiny_spec(recency_interests=2, category_profile=16))
    bought = build_model(tiny_spec(recency_interests=2, category_profile=16, purchase_pool=True))
    assert isinstance(plain, DUPNModel) and isinstance(bought, DUPNModel)
    tower, before = bought.tower, plain.tower
    assert isinstance(tower, UserTower) and isinstance(before, UserTower)
    assert tower.recency_pools == 3 and bought.embedding_dim - plain.embedding_dim == tower.interest_dim + 1 + 16
    assert tower.match_dim - before.match_dim == 2 + 1 + 2  # cosines, cosine x mass, count and share
    batch = random_batch(n=12, seed=3)
    with torch.no_grad():
        rep = bought.eval()(batch)["representation"]
    profile = tower.category_profile(rep)[:, 2]  # (B, 16): the purchases' row
    n = int(batch["seq_len"].max())
    valid = torch.arange(n).unsqueeze(0) < batch["seq_len"].unsqueeze(1)
    buys = (batch["seq_behavior"][:, :n] == BEHAVIOR_INDEX["buy"]) & valid
    has = torch.zeros(12, 16, dtype=torch.bool)
    for b in range(12):
        has[b, batch["seq_category"][b, :n][buys[b]] % 16] = True
    assert buys.any() and (~buys & valid).any()
    assert torch.equal(profile > 0, has)  # a category's count is positive exactly where the user bought
    changed = dict(batch)
    changed["seq_behavior"] = torch.where(buys, BEHAVIOR_INDEX["click"], batch["seq_behavior"][:, :n])
    changed["seq_behavior"] = torch.cat([changed["seq_behavior"], batch["seq_behavior"][:, n:]], dim=1)
    with torch.no_grad():
        after = bought(changed)["representation"]
    assert (tower.category_profile(after)[:, 2] == 0).all() and (tower.activity(after)[:, 2] == 0).all()
    _total(bought.train(), batch).backward()  # trains end to end
    with pytest.raises(ValueError, match="purchase_pool"):
        tiny_spec(purchase_pool=True)


def test_price_match_gives_item_heads_the_targets_gap_to_the_users_prices() -> None:
    """With model.price_match the item heads read 8 more match features: the target's normalised relative
    price minus the user's mean of each behaviour type (click, fav, cart, buy), and its absolute value,
    zero where the user has no behaviour of that type or the target has no price; talents get none."""
    torch.manual_seed(0)
    plain = build_model(tiny_spec(recency_interests=2))
    priced = build_model(tiny_spec(recency_interests=2, price_match=True))
    assert isinstance(priced, DUPNModel) and isinstance(plain, DUPNModel)
    tower = priced.tower
    assert isinstance(tower, UserTower)
    assert tower.match_dim - plain.tower.match_dim == 8  # type: ignore[union-attr]
    assert tower.category_match_dim == plain.tower.category_match_dim  # type: ignore[union-attr]
    batch = random_batch(n=12, seed=3)
    with torch.no_grad():
        rep = priced.eval()(batch)["representation"]
        category, tags, price = batch["item_category"], batch["item_tags"], batch["item_log_price"]
        tags = tags.reshape(tags.shape[0], category.shape[1], -1)
        match = tower.match(rep, category, tags, price)
        n = int(batch["seq_len"].max())
        x = tower.items.relative_price(batch["seq_log_price"][:, :n], batch["seq_category"][:, :n])
        valid = torch.arange(n).unsqueeze(0) < batch["seq_len"].unsqueeze(1)
        target = tower.items.relative_price(price, category)
    gap, size = match[..., -8:-4], match[..., -4:]
    for j, name in enumerate(("click", "fav", "cart", "buy")):
        of_type = (batch["seq_behavior"][:, :n] == BEHAVIOR_INDEX[name]) & valid
        count = of_type.sum(dim=1)
        mean = (x * of_type).sum(dim=1) / count.clamp_min(1)
        want = (target - mean.unsqueeze(1)) * (count > 0).unsqueeze(1) * (price > 0)
        torch.testing.assert_close(gap[..., j], want, atol=1e-5, rtol=1e-4)
        assert (count == 0).any() and (count > 0).any()  # the batch has users with and without the type
    torch.testing.assert_close(size, gap.abs())
    assert (gap[price <= 0] == 0).all() and (price <= 0).any()
    with pytest.raises(ValueError, match="price_match"):
        tower.match(rep, category, tags)
    _total(priced.train(), batch).backward()  # trains end to end
    # a head with no rows in a batch (e.g. no search list) gets an empty match, not a reshape error
    empty = tower.match(rep[:0], category[:0], tags[:0], price[:0])
    assert empty.shape == (0, category.shape[1], tower.match_dim)


def test_price_match_without_time_decay_pools_gives_the_match_features_their_declared_width() -> None:
    """The price gaps do not depend on the pools: without pools the item heads still read them (the match had
    returned the cosines alone, narrower than match_dim, and the heads' first layer failed)."""
    torch.manual_seed(0)
    model = build_model(tiny_spec(recency_interests=0, price_match=True))
    tower = model.tower
    assert isinstance(tower, UserTower) and tower.recency_pools == 0
    batch = random_batch(n=8, seed=2)
    with torch.no_grad():
        rep = model.eval()(batch)["representation"]
        category, tags = batch["item_category"], batch["item_tags"]
        match = tower.match(rep, category, tags.reshape(tags.shape[0], category.shape[1], -1), batch["item_log_price"])
    assert match.shape[-1] == tower.match_dim == 2 * tower.n_interests + 8
    assert "ctr_logit" in model(batch)


@pytest.mark.parametrize("pieces", [False, True])
def test_target_priors_reach_the_heads_and_only_their_own_rows(pieces: bool) -> None:
    """With model.target_priors the item heads read 3 more inputs per slot (whether the list has a query,
    the query's earlier share in the item's category and its log) and the follow head 4 (the talent's and
    the user's earlier follow counts and rates), or with model.prior_pieces each prior's pieces at the fixed
    knots (1 + 12 per slot, 2 x (13 + 12) per follow row): changing a row's priors changes that row's scores,
    leaves every other row's and the representation alone, and a list without a query ignores its shares."""
    torch.manual_seed(0)
    plain = build_model(tiny_spec())
    model = build_model(tiny_spec(target_priors=True, prior_pieces=pieces))
    assert isinstance(model, DUPNModel) and isinstance(plain, DUPNModel)
    item_dim = 1 + len(PRIOR_RATE_KNOTS) - 1 if pieces else ITEM_PRIOR_DIM
    follow_dim = 2 * (len(PRIOR_COUNT_KNOTS) - 1 + len(PRIOR_RATE_KNOTS) - 1) if pieces else FOLLOW_PRIOR_DIM
    assert (item_dim, follow_dim) == ((13, 50) if pieces else (3, 4))
    assert model.heads["ctr"].match_dim - plain.heads["ctr"].match_dim == item_dim  # type: ignore
    assert model.heads["follow"].match_dim - plain.heads["follow"].match_dim == follow_dim  # type: ignore
    batch = random_batch(n=12, seed=5)
    model.eval()
    with torch.no_grad():
        before = model(batch)
    imp = (batch["kind_id"] == 0) & (batch["query_tokens"][:, 0] != 0)
    row = int(torch.nonzero(imp)[0])
    fol = int(torch.nonzero(batch["kind_id"] == 1)[0])
    changed = {k: v.clone() for k, v in batch.items()}
    changed["item_query_share"][row, 0] = 0.9 if float(batch["item_query_share"][row, 0]) < 0.5 else 0.01
    changed["talent_prior"][fol] = torch.tensor([500.0, 0.6, 40.0, 0.02])
    no_query = int(torch.nonzero((batch["kind_id"] == 0) & (batch["query_tokens"][:, 0] == 0))[0])
    changed["item_query_share"][no_query, 0] = 0.7
    with torch.no_grad():
        after = model(changed)
    torch.testing.assert_close(after["representation"], before["representation"])
    for key, moved in (("ctr_logit", row), ("l2r_score", row), ("follow_logit", fol)):
        others = torch.arange(12) != moved
        torch.testing.assert_close(after[key][others], before[key][others])
        assert not torch.allclose(after[key][moved], before[key][moved]), key
    # the share of a list without a query is never read
    torch.testing.assert_close(after["ctr_logit"][no_query], before["ctr_logit"][no_query])
    # serving: the scorer has no query and needs no priors in its batch
    scorer = model.item_scorer()
    k = batch["item_tags"].shape[1] // batch["item"].shape[1]
    items = {"item": batch["item"][:, 0], "item_shop": batch["item_shop"][:, 0],
             "item_brand": batch["item_brand"][:, 0], "item_category": batch["item_category"][:, 0],
             "item_tags": batch["item_tags"][:, :k], "item_log_price": batch["item_log_price"][:, 0],
             "rank_features": batch["rank_features"][:, :batch["rank_features"].shape[1] // batch["item"].shape[1]]}
    with torch.no_grad():
        p = scorer(before["representation"], items)
    assert p.shape == (12,) and torch.all((p > 0) & (p < 1))


def test_fixed_pieces_match_the_piecewise_linear_encoding_computed_by_hand() -> None:
    """Piece i of x is clamp((x - k_i) / (k_(i+1) - k_i), 0, 1): 1 below x, x's fraction of its own piece, 0
    above; the follow priors give a count's pieces at the count knots and a rate's at the rate knots."""
    from training.model import fixed_pieces, follow_priors

    x = torch.tensor([0.0, 3.0, 2e6])
    got = fixed_pieces(x, (0.0, 1.0, 2.0, 5.0, 10.0))
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1 / 3, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    batch = {"talent_prior": torch.tensor([[7.0, 0.12, 0.0, 0.5]])}
    p = follow_priors(batch, torch.tensor([0]), pieces=True)[0]
    n_c, n_r = len(PRIOR_COUNT_KNOTS) - 1, len(PRIOR_RATE_KNOTS) - 1
    talent_count, talent_rate = p[:n_c], p[n_c:n_c + n_r]
    user_count, user_rate = p[n_c + n_r:2 * n_c + n_r], p[2 * n_c + n_r:]
    assert talent_count[:3].tolist() == [1.0, 1.0, 1.0] and talent_count[3].item() == pytest.approx(0.4)
    assert float(talent_count[4:].sum()) == 0.0
    assert talent_rate[:4].tolist() == [1.0, 1.0, 1.0, 1.0] and talent_rate[4].item() == pytest.approx(0.4)
    assert float(user_count.sum()) == 0.0 and float(user_rate.sum()) == pytest.approx(
        sum(min(max((0.5 - a) / (b - a), 0.0), 1.0) for a, b in zip(PRIOR_RATE_KNOTS, PRIOR_RATE_KNOTS[1:])))


def test_prior_pieces_let_the_follow_head_learn_a_band_of_the_talents_rate_that_logs_do_not() -> None:
    """A follow label that is the talent's earlier rate within a band (0.15 to 0.25, neither end of its
    range) is learnt from the pieces in a short training, not from the log of the rate: what moved the
    feature MLP's follow AUC from 0.733 to 0.741 on the demo world (docs/learning.md). Every other input is
    the same on every row, so the rate is all there is to learn from."""
    def trained_auc(pieces: bool) -> float:
        torch.manual_seed(0)
        model = build_model(tiny_spec(tasks=("follow",), target_priors=True, prior_pieces=pieces))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        batches = []
        for seed in range(6):
            b = {k: v[:1].expand_as(v).clone() if v.ndim and v.shape[0] == 64 else v
                 for k, v in random_batch(n=64, seed=0, kinds=[1] * 64).items()}  # one user, one sequence
            g = torch.Generator().manual_seed(seed + 200)
            rate = torch.rand(64, generator=g) * 0.5
            b["talent_prior"] = torch.stack([torch.full((64,), 50.0), rate, torch.full((64,), 5.0),
                                             torch.full((64,), 0.1)], dim=1)
            b["label_follow"] = ((rate > 0.15) & (rate < 0.25)).float()
            b["follow_weight"] = torch.ones(64)
            batches.append(b)
        model.train()
        for _ in range(30):
            for b in batches[:5]:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b)["follow_logit"], b["label_follow"])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            logit = model(batches[5])["follow_logit"]
        return auc_of(batches[5]["label_follow"].numpy(), logit.numpy())

    with_pieces, with_logs = trained_auc(True), trained_auc(False)
    assert with_pieces > 0.95, with_pieces  # 0.998 when written
    assert with_logs < 0.7, with_logs  # 0.37: the loss stays at the base rate's


def test_prior_pieces_act_only_with_the_target_priors() -> None:
    """model.prior_pieces without target_priors builds the model without priors (a configuration that turns the
    priors off need not turn their encoding off too)."""
    torch.manual_seed(0)
    plain = build_model(tiny_spec())
    pieces_alone = build_model(tiny_spec(prior_pieces=True))
    assert isinstance(plain, DUPNModel) and isinstance(pieces_alone, DUPNModel)
    assert pieces_alone.heads["follow"].match_dim == plain.heads["follow"].match_dim  # type: ignore
    assert pieces_alone.heads["ctr"].match_dim == plain.heads["ctr"].match_dim  # type: ignore


def test_target_priors_let_the_item_head_learn_a_label_that_only_the_share_explains() -> None:
    """A click label that is the query's earlier share in the item's category (above 0.5) is learnt with
    target priors and not without them (no other input carries it)."""
    def trained_auc(priors: bool) -> float:
        torch.manual_seed(0)
        model = build_model(tiny_spec(tasks=("ctr",), target_priors=priors))
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        batches = []
        for seed in range(6):
            b = random_batch(n=48, seed=seed, kinds=[0] * 48)
            b["query_tokens"][:, 0] = 3  # every list has a query
            slots = b["ctr_weight"] > 0
            for key in ("item", "item_shop", "item_brand", "item_category", "item_tags"):
                b[key] = torch.where(b[key] > 0, 3, 0)  # one item everywhere: its ids tell nothing
            b["item_query_share"] = torch.rand(b["item"].shape, generator=torch.Generator().manual_seed(seed + 100)) \
                * slots
            b["label_click"] = (b["item_query_share"] > 0.5).float() * slots
            batches.append(b)
        model.train()
        for _ in range(40):
            for b in batches[:5]:
                out = model(b)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    out["ctr_logit"], b["label_click"], weight=b["ctr_weight"])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        test = batches[5]
        with torch.no_grad():
            logit = model(test)["ctr_logit"]
        keep = test["ctr_weight"] > 0
        return auc_of(test["label_click"][keep].numpy(), logit[keep].numpy())

    assert trained_auc(True) > 0.85  # 0.93 when written
    assert trained_auc(False) < 0.65  # 0.51: the model memorises the training rows' other inputs


def test_profile_top_share_adds_the_count_over_the_users_top_category_count() -> None:
    """With model.profile_top_share each item's match features end with every pool's decayed count in the target's
    category over the pool's largest count in any category: 1 for the user's top category, 0 without behaviours
    there; the representation (what the nightly job publishes) does not change."""
    torch.manual_seed(0)
    pools, buckets = 2, 12
    profiled = build_model(tiny_spec(recency_interests=pools, category_profile=buckets))
    topped = build_model(tiny_spec(recency_interests=pools, category_profile=buckets, profile_top_share=True))
    assert isinstance(profiled, DUPNModel) and isinstance(topped, DUPNModel)
    tower = topped.tower
    assert isinstance(tower, UserTower)
    assert tower.match_dim - profiled.tower.match_dim == pools  # type: ignore[union-attr]
    assert topped.embedding_dim == profiled.embedding_dim
    batch, w, match = _first_category_match(topped, 6, 5)
    n, target = w.shape[2], batch["seq_category"][:, :1]
    cats = batch["seq_category"][:, :n]
    per_cat = torch.stack([(w * (cats == c).unsqueeze(1)).sum(dim=2) for c in range(buckets)], dim=2)  # (B, P, C)
    in_target = (w * (cats == target).unsqueeze(1)).sum(dim=2)
    expected = in_target / per_cat.max(dim=2).values.clamp_min(1e-6)
    torch.testing.assert_close(match[:, -pools:], expected, atol=1e-5, rtol=1e-4)
    assert ((expected - 1).abs() < 1e-5).any() and (expected[in_target > 0] <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match="profile_top_share"):
        tiny_spec(recency_interests=pools, profile_top_share=True)
