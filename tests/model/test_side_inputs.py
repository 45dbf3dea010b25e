"""Side inputs (training/side_inputs.py, model.side_inputs): quantile ranks, the lookup by id, the pieces the
heads read, and a head that learns from them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import PetastormSource
from training.evaluation import auc
from training.losses import TOWER_OUTPUTS
from training.model import build_model
from training.modules import QuantilePieces, QuantileRanks
from training.side_inputs import SideSource, SideTable, SideWorkload, quantile_knots, quantile_ranks

from .conftest import G, random_batch, tiny_spec

NAN = float("nan")


def test_ranks_are_linear_between_distinct_quantiles_and_keep_missing_values_missing() -> None:
    train = np.array([[0, 5], [0, 5], [0, 5], [1, 5], [2, 5], [4, 5], [NAN, NAN]], dtype=np.float32)
    knots = quantile_knots(train, bins=4)
    assert knots[0].tolist() == [0.0, 0.5, 1.75, 4.0]  # the quartiles 0, 0, 0.5, 1.75, 4: one knot at 0
    assert knots[1].tolist() == [5.0]
    ranks = quantile_ranks(np.array([[0, 5], [1, 7], [3, 1], [9, NAN], [-1, 5], [NAN, 5]], dtype=np.float32), knots)
    np.testing.assert_allclose(ranks[:5, 0], [0.0, (1 + 0.5 / 1.25) / 3, (2 + 1.25 / 2.25) / 3, 1.0, 0.0], atol=1e-6)
    assert np.isnan(ranks[5, 0]) and np.isnan(ranks[3, 1])
    assert ranks[[0, 1, 2, 4, 5], 1].tolist() == [0.0] * 5  # a constant column carries nothing
    all_missing = quantile_knots(np.full((3, 1), NAN, dtype=np.float32), bins=4)
    assert np.isnan(quantile_ranks(np.array([[1.0]], dtype=np.float32), all_missing)).all()


def test_the_models_ranks_are_those_of_quantile_ranks() -> None:
    rng = np.random.default_rng(0)
    train = np.stack([rng.exponential(3.0, 500), rng.integers(0, 4, 500), np.full(500, 2.0),
                      np.full(500, NAN)], axis=1).astype(np.float32)
    train[rng.random(500) < 0.1, 0] = NAN
    knots = quantile_knots(train, bins=8)
    assert [len(k) for k in knots[2:]] == [1, 0]  # a constant and an all-missing column
    values = np.concatenate([train[:50], [[-1.0, 9.0, 3.0, 1.0], [NAN, 0.5, NAN, NAN]]]).astype(np.float32)
    got = QuantileRanks([k.tolist() for k in knots])(torch.from_numpy(values).reshape(2, 26, 4)).reshape(52, 4)
    np.testing.assert_allclose(got.numpy(), quantile_ranks(values, knots), atol=1e-6)  # NaN where it is NaN
    with pytest.raises(ValueError, match="increase"):
        QuantileRanks([[1.0, 1.0, 2.0]])


def test_a_spec_with_side_columns_ranks_raw_values_as_the_table_ranks_them() -> None:
    """The hybrid model's spec keeps its side columns and knots (to_dict round trip); given raw values it
    scores as the model without knots scores their quantile ranks."""
    from training.spec import ModelSpec

    plain = tiny_spec(side_inputs=3)
    rng = np.random.default_rng(1)
    knots = [np.unique(np.quantile(rng.normal(size=200), np.linspace(0, 1, 9))) for _ in range(3)]
    spec = plain.with_side(["a", "b", "c"], [k.tolist() for k in knots])
    assert spec.reads_side and not plain.reads_side
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict({k: v for k, v in plain.to_dict().items() if not k.startswith("side_")}) == plain
    with pytest.raises(Exception, match="side"):
        ModelSpec.from_dict({**spec.to_dict(), "side_knots": [[0.0, 1.0]]})
    torch.manual_seed(0)
    raw_model = build_model(spec).eval()
    rank_model = build_model(plain).eval()
    rank_model.load_state_dict(raw_model.state_dict())
    batch = random_batch(12, seed=1)
    slot_raw = rng.normal(size=(12, G * 3)).astype(np.float32)
    row_raw = rng.normal(size=(12, 3)).astype(np.float32)
    slot_raw[0, 1] = NAN
    raw = {**batch, "slot_side": torch.from_numpy(slot_raw), "row_side": torch.from_numpy(row_raw)}
    ranked = {**batch, "slot_side": torch.from_numpy(quantile_ranks(slot_raw.reshape(-1, 3), knots).reshape(12, -1)),
              "row_side": torch.from_numpy(quantile_ranks(row_raw, knots))}
    a, b = raw_model(raw), rank_model(ranked)
    for key in ("ctr_logit", "l2r_score", "follow_logit"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)


def test_pieces_are_the_piecewise_linear_encoding_with_a_missing_indicator() -> None:
    enc = QuantilePieces(columns=2, bins=4)
    out = enc(torch.tensor([[0.3, NAN], [1.0, 0.0]]))
    assert out.shape == (2, enc.out_dim) == (2, 10)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[1], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="model.side_inputs"):
        enc(torch.zeros(2, 3))


def _split(ids: list[int], tasks: list[str], values: list[list[float]]) -> dict[str, np.ndarray]:
    v = np.array(values, dtype=np.float32)
    return {"example_id": np.array(ids, dtype=np.int64), "task": np.array(tasks), "a": v[:, 0], "b": v[:, 1]}


def _table() -> SideTable:
    train = _split([11, 12, 13, 7], ["impressions", "impressions", "impressions", "follow"],
                   [[0, 10], [1, 20], [2, NAN], [1, 30]])
    test = _split([21, 8, 9], ["impressions", "follow", "ppp"], [[4, 15], [0, 10], [5, 5]])
    return SideTable.build([train, test], train, ("a", "b"), bins=4)


def test_the_table_attaches_each_slots_and_each_follow_rows_own_ranks_by_id() -> None:
    table = _table()
    assert table.ids["impressions"].tolist() == [11, 12, 13, 21] and table.ids["follow"].tolist() == [7, 8]
    batch = {"example_id": torch.tensor([[21, 11, 0], [0, 0, 0], [12, 0, 0]]), "group_id": torch.tensor([1, 8, 2]),
             "kind_id": torch.tensor([0, 1, 0])}
    out = table.attach(batch)
    assert "example_id" not in out and "group_id" not in out and out["kind_id"] is batch["kind_id"]
    slots = out["slot_side"].reshape(3, 3, 2)
    expected = {21: table.ranks["impressions"][3], 11: table.ranks["impressions"][0],
                12: table.ranks["impressions"][1]}
    for (r, s), key in {(0, 0): 21, (0, 1): 11, (2, 0): 12}.items():
        np.testing.assert_array_equal(slots[r, s].numpy(), expected[key])
    assert torch.isnan(slots[0, 2]).all() and torch.isnan(slots[1]).all()  # padding slots: missing
    np.testing.assert_array_equal(out["row_side"][1].numpy(), table.ranks["follow"][1])
    assert torch.isnan(out["row_side"][0]).all()  # not a follow row
    # the training rows' knots: a = 0, 1, 2 (and 1 from the follow row) -> ranks 0, 0.5, 1; b's NaN stays NaN
    np.testing.assert_allclose(table.ranks["impressions"][:3, 0], [0.0, 0.5, 1.0])
    assert np.isnan(table.ranks["impressions"][2, 1])
    with pytest.raises(ValueError, match="impression slot 99 has no row in features/gbdt_examples"):
        table.attach({"example_id": torch.tensor([[99, 0, 0]]), "group_id": torch.tensor([1])})


def test_an_id_that_occurs_twice_is_refused() -> None:
    train = _split([11, 11], ["impressions", "impressions"], [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="example_id 11 occurs twice among the impressions rows"):
        SideTable.build([train], train, ("a", "b"), bins=4)


def test_the_workload_reads_the_ids_and_checks_the_models_width() -> None:
    table = _table()
    with pytest.raises(ValueError, match="training.model.side_inputs=2"):
        SideWorkload(tiny_spec(side_inputs=3), table)
    source = SideSource.of(PetastormSource(files=("f",), fields=("kind_id", "group_id")), table)
    assert source.fields == ("kind_id", "group_id", "example_id") and source.table is table


def _with_side(batch: dict[str, torch.Tensor], c: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = len(batch["kind_id"])
    return {**batch, "slot_side": torch.rand(n, G * c, generator=g), "row_side": torch.rand(n, c, generator=g)}


def test_each_head_reads_its_own_slots_and_rows_side_inputs() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(side_inputs=3)).eval()
    batch = _with_side(random_batch(12, seed=1), 3, seed=2)
    base = model(batch)
    imp = int(torch.nonzero(batch["n_items"] >= 2)[0, 0])
    changed = dict(batch)
    changed["slot_side"] = batch["slot_side"].clone()
    changed["slot_side"][imp, :3] = torch.tensor([NAN, 0.99, 0.01])  # slot 0 of one impression row only
    out = model(changed)
    moved = (out["ctr_logit"] - base["ctr_logit"]).abs() > 1e-6
    assert moved[imp, 0] and int(moved.sum()) == 1
    assert (out["l2r_score"][imp, 0] - base["l2r_score"][imp, 0]).abs() > 1e-6 or batch["l2r"][imp] == 0
    fol = int(torch.nonzero(batch["kind_id"] == 1)[0, 0])
    changed = dict(batch)
    changed["row_side"] = batch["row_side"].clone()
    changed["row_side"][fol] = 1.0 - batch["row_side"][fol]
    out = model(changed)
    moved_f = (out["follow_logit"] - base["follow_logit"]).abs() > 1e-6
    assert moved_f[fol] and int(moved_f.sum()) == 1
    with pytest.raises(KeyError, match="slot_side"):
        model({k: v for k, v in batch.items() if k != "slot_side"})
    with pytest.raises(ValueError, match="side inputs"):
        model.item_scorer()


def test_the_ctr_head_learns_a_rule_only_its_side_inputs_hold() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(tasks=("ctr",), side_inputs=2, head_hidden=16))
    batch = _with_side(random_batch(96, seed=3, kinds=[0] * 96), 2, seed=4)
    side = batch["slot_side"].reshape(96, G, 2)
    slots = torch.arange(G).unsqueeze(0) < batch["n_items"].unsqueeze(1)
    label = ((side[..., 1] > 0.3) & (side[..., 1] < 0.7)).float()  # a band: not linear in the rank
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        logit = model(batch)["ctr_logit"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit[slots], label[slots])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = model.eval()(batch)["ctr_logit"][slots].numpy()
    assert auc(label[slots].numpy(), score) > 0.95


@pytest.mark.parametrize("priors", [False, True])
def test_detached_side_heads_leave_the_towers_training_as_without_side_inputs(priors: bool) -> None:
    """model.side_detached: the heads without side inputs are built, and train the tower, exactly as a model
    without side inputs builds and trains them (with the target priors: as logs, though the side heads read
    them as pieces, model.prior_pieces); the side heads learn too, and give the outputs."""
    from core.config import TrainingConfig, WeightingConfig
    from training.model import last_shared_layer
    from training.step import TrainTask
    from training.weighting import build_weighting

    cfg = TrainingConfig(optimizer="adam", lr=0.02, weight_decay=1e-4, weighting=WeightingConfig(kind="uncertainty"))
    models, tasks = [], []
    for spec in (tiny_spec(target_priors=priors),
                 tiny_spec(target_priors=priors, prior_pieces=priors, side_inputs=3, side_detached=True)):
        torch.manual_seed(0)
        model = build_model(spec)
        models.append(model)
        tasks.append(TrainTask(model, build_weighting(cfg.weighting, spec.loss_names, last_shared_layer(model)), cfg))
    plain, detached = models
    assert detached.tower_heads is not None and set(detached.tower_heads) == {"ctr", "cvr", "l2r", "follow"}
    side_before = {k: v.clone() for k, v in detached.heads.state_dict().items()}
    for step in range(6):
        batch = random_batch(24, seed=10 + step)
        first = tasks[0].step(batch)
        second = tasks[1].step(_with_side(batch, 3, seed=step))
        for t in plain.spec.loss_names:  # the weighting sees the tower heads' losses: the same values
            assert second[f"loss_{t}"] == pytest.approx(first[f"loss_{t}"], rel=1e-5, abs=1e-6)
    reference = plain.state_dict()
    for name, value in detached.tower.state_dict().items():
        torch.testing.assert_close(value, reference[f"tower.{name}"], rtol=1e-5, atol=1e-6, msg=name)
    for name, value in detached.tower_heads.state_dict().items():
        torch.testing.assert_close(value, reference[f"heads.{name}"], rtol=1e-5, atol=1e-6, msg=name)
    for name, value in detached.heads["ppp"].state_dict().items():
        torch.testing.assert_close(value, reference[f"heads.ppp.{name}"], rtol=1e-5, atol=1e-6, msg=name)
    moved = [k for k, v in detached.heads.state_dict().items() if not k.startswith("ppp.") and
             not k.startswith("follow.category.") and not torch.equal(v, side_before[k])]
    assert any(k.startswith("ctr.") for k in moved) and any(k.startswith("follow.") for k in moved)
    # the outputs are the side heads': they read the side inputs, the tower heads' outputs do not (those run
    # only in training: the same dropout draws for both batches)
    batch = _with_side(random_batch(12, seed=1), 3, seed=2)
    changed = {**batch, "slot_side": 1.0 - batch["slot_side"], "row_side": 1.0 - batch["row_side"]}
    with torch.no_grad():
        torch.manual_seed(3)
        base = detached(batch)
        torch.manual_seed(3)
        out = detached(changed)
    assert not torch.allclose(out["ctr_logit"], base["ctr_logit"])
    assert not torch.allclose(out["follow_logit"], base["follow_logit"])
    torch.testing.assert_close(out["tower_ctr_logit"], base["tower_ctr_logit"])
    torch.testing.assert_close(out["tower_follow_logit"], base["tower_follow_logit"])
    # scoring runs the side heads only
    detached.eval()
    scored = detached(batch)
    assert not [k for k in scored if k.startswith(TOWER_OUTPUTS)]
    with pytest.raises(ValueError, match="family dupn"):
        build_model(tiny_spec(family="wide_deep", side_inputs=3, side_detached=True))


def test_a_detached_model_stored_before_its_tower_heads_read_logs_still_loads() -> None:
    """A detached model's spec records that its tower heads read the priors as logs; the spec of one stored
    before (no such key) loads with tower heads that read them as pieces, as they were trained, and runs."""
    from training.model import follow_prior_dim
    from training.spec import ModelSpec

    spec = tiny_spec(target_priors=True, prior_pieces=True, side_inputs=3, side_detached=True)
    data = spec.to_dict()
    assert data["tower_log_priors"] is True and ModelSpec.from_dict(data).tower_log_priors
    del data["tower_log_priors"]
    stored = ModelSpec.from_dict(data)
    assert not stored.tower_log_priors
    current, legacy = build_model(spec), build_model(stored)
    width = {name: m.state_dict()["tower_heads.follow.mlp.0.weight"].shape[1] for name, m in
             (("current", current), ("legacy", legacy))}
    assert width["legacy"] - width["current"] == follow_prior_dim(True) - follow_prior_dim(False) > 0
    legacy.load_state_dict(build_model(stored).state_dict())
    out = legacy.train()(_with_side(random_batch(12, seed=4), 3, seed=5))
    assert torch.isfinite(out["tower_follow_logit"]).all() and torch.isfinite(out["ctr_logit"]).all()
