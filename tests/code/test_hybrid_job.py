"""The hybrid model through the platform's jobs on the tiny world: build_hybrid_examples, full training with
``training.hybrid`` and ``model.side_detached`` (the spec keeps the side columns and their knots; the side
heads read the raw values of features/hybrid_examples, the tower and its own heads do not), the promotion
gate scoring a hybrid champion, incremental training that follows the champion, and the refusal to gate a
plain candidate against a hybrid champion. Real MLflow, Petastorm and Delta."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from core import tables as t
from features.gbdt import SIDE_COLUMNS
from jobs import build_hybrid_examples, train
from registry.models import ModelRegistry
from tests.conftest import SMALL, TINY_END, TINY_START, TINY_WORLD, TRAIN_DAYS, VALID_DAY, make_config
from tests.helpers import run
from training.data import EVAL_FIELDS, SIDE_FIELDS
from training.losses import TOWER_OUTPUTS
from training.trainer import DUPNWorkload, eval_source

HYBRID = (*TINY_WORLD, *SMALL, "training.hybrid=true", "training.model.prior_pieces=true",
          "training.model.side_detached=true")


@pytest.fixture(scope="module")
def hybrid(tiny_pipeline, tmp_path_factory):  # noqa: ANN001, ANN201
    """A copy of the tiny lake with features/hybrid_examples, and its own MLflow store holding one full hybrid
    run (the champion)."""
    _, _, lake_tmp = tiny_pipeline
    tmp = tmp_path_factory.mktemp("hybrid")
    lake = tmp / "lake"
    shutil.copytree(lake_tmp / "lake", lake)
    assert run(build_hybrid_examples, tmp, "--start", TINY_START, "--end", TINY_END, overrides=tuple(TINY_WORLD),
               lake=str(lake)) == 0
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=HYBRID, lake=str(lake)) == 0
    cfg = make_config(tmp, *HYBRID, f"lake_root={lake}")
    return cfg, tmp, str(lake)


def test_a_hybrid_champion_keeps_its_side_columns_and_knots_and_reads_them(hybrid) -> None:
    from core.delta import get_tables
    from core.spark import get_spark

    cfg, _, _ = hybrid
    reg = ModelRegistry(cfg.mlflow)
    champ = reg.load()
    spec = champ.spec
    assert spec.side_columns == SIDE_COLUMNS and spec.model.side_inputs == len(SIDE_COLUMNS)
    tables = get_tables(get_spark(cfg), cfg)
    meta = tables.metadata(t.HYBRID_EXAMPLES, tables.version(t.HYBRID_EXAMPLES))
    assert [list(k) for k in spec.side_knots] == meta["side"]["knots"]
    # the test split's batches carry the raw side inputs, and the heads read them
    work = DUPNWorkload(spec)
    assert set(SIDE_FIELDS) <= set(work.fields(EVAL_FIELDS))
    files = tables.files(t.HYBRID_EXAMPLES, [TINY_END])
    batch = next(iter(work.eval_source(cfg.training, files).batches()))
    model = champ.model.eval()
    with torch.no_grad():
        base = model(batch)
        moved = dict(batch)
        moved["slot_side"] = torch.nan_to_num(batch["slot_side"], nan=0.0) * 3.0 + 1.0
        moved["row_side"] = torch.nan_to_num(batch["row_side"], nan=0.0) * 3.0 + 1.0
        other = model(moved)
    rows = batch["kind_id"] == 0
    assert not torch.allclose(base["ctr_logit"][rows], other["ctr_logit"][rows])
    follow = batch["kind_id"] == 1
    if bool(follow.any()):
        assert not torch.allclose(base["follow_logit"][follow], other["follow_logit"][follow])
    # the representation does not read them: the published vectors are the tower's alone
    np.testing.assert_allclose(base["representation"].numpy(), other["representation"].numpy())
    # nor do the heads that train the tower (model.side_detached), which run in training only (same dropout draws)
    assert not [k for k in base if k.startswith(TOWER_OUTPUTS)]
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        base = model(batch)
        torch.manual_seed(0)
        other = model(moved)
    model.eval()
    np.testing.assert_allclose(base["tower_ctr_logit"].numpy(), other["tower_ctr_logit"].numpy())
    # a reader without the side fields gives the model nothing to read: a one-line error naming them
    plain = next(iter(eval_source(cfg.training, files, spec.tasks).batches()))
    with pytest.raises(KeyError, match="slot_side"):
        model(plain)


def test_incremental_training_of_a_hybrid_champion_reads_the_hybrid_examples(hybrid) -> None:
    import mlflow

    cfg, tmp, lake = hybrid
    reg = ModelRegistry(cfg.mlflow)
    before = reg.load()
    # a plain configuration: incremental training follows the champion's spec, side inputs included
    assert run(train, tmp, "--mode", "incremental", "--date", VALID_DAY, overrides=(*TINY_WORLD, *SMALL),
               lake=lake) == 0
    versions = sorted(int(v.version) for v in reg.client.search_model_versions(f"name='{reg.name}'"))
    new = reg.load(str(versions[-1]))
    assert new.spec.side_columns == before.spec.side_columns and new.spec.side_knots == before.spec.side_knots
    assert new.spec.model.side_detached and new.model.tower_heads is not None
    params = mlflow.get_run(new.run_id).data.params
    assert params["examples_table"] == t.HYBRID_EXAMPLES.name and params["side_inputs"] == str(len(SIDE_COLUMNS))


def test_a_plain_candidate_is_not_gated_against_a_hybrid_champion(hybrid, capsys) -> None:
    cfg, tmp, lake = hybrid
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=(*TINY_WORLD, *SMALL), lake=lake) != 0
    err = capsys.readouterr().err
    assert "reads side inputs" in err and "training.hybrid=true" in err
