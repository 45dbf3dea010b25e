"""jobs/train.py on the tiny world: MLflow run, registry round trip, promotion gate, incremental
warm start, and a 2-process TorchDistributor run. Real MLflow (SQLite), real Petastorm, real Delta."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from core import tables as t
from jobs import train
from registry.models import ModelRegistry, user_outputs
from tests.conftest import SMALL, TINY_END, TINY_WORLD, TRAIN_DAYS
from tests.conftest import make_config
from tests.helpers import run


@pytest.fixture(scope="module")
def trained(tiny_pipeline, tmp_path_factory):  # noqa: ANN001, ANN201
    """Its own MLflow store (these tests move the champion alias), one full run promoted."""
    _, tables, lake_tmp = tiny_pipeline
    tmp = tmp_path_factory.mktemp("mlflow_train")
    lake = f"lake_root={lake_tmp / 'lake'}"
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=(*TINY_WORLD, *SMALL, lake)) == 0
    return make_config(tmp, *TINY_WORLD, *SMALL, lake), tables, tmp


def user_frame(tables, n: int = 32):  # noqa: ANN001, ANN201
    return tables.read(t.USER_SEQUENCES, dt=TINY_END).limit(n).toPandas()


def test_full_run_is_logged_registered_and_promoted(trained) -> None:
    cfg, tables, tmp = trained
    reg = ModelRegistry(cfg.mlflow)
    assert reg.champion_version() == "1"
    loaded = reg.load()
    run_ = mlflow.get_run(loaded.run_id)
    m = run_.data.metrics
    for name in ("holdout_ctr_auc", "holdout_follow_auc", "holdout_ppp_accuracy", "holdout_l2r_ndcg10",
                 "train_loss", "samples_per_second"):
        assert name in m, name
    assert run_.data.params["mode"] == "full" and run_.data.params["tasks"] == "ctr,l2r,follow,ppp"
    assert run_.data.tags["promotion.decision"] == "promoted"
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(loaded.run_id)}
    assert {"config", "lineage", "plots", "analysis", "promotion"} <= arts
    plots = {a.path for a in client.list_artifacts(loaded.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/attention_by_behaviour_and_age.png"}
    history = client.get_metric_history(loaded.run_id, "loss_ctr")
    assert len(history) >= 1
    lineage = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{loaded.run_id}/lineage/inputs_stats_encoding.json")).read_text())
    assert lineage["feature_stats_day"] == TINY_END
    assert set(lineage["normalisation"]) == {"seq_log_price", "item_log_price", "user_dense", "rank_features"}


def test_registry_round_trip_gives_the_same_outputs(trained) -> None:
    cfg, tables, _ = trained
    reg = ModelRegistry(cfg.mlflow)
    loaded = reg.load()
    frame = user_frame(tables)
    direct = user_outputs(loaded.model, frame)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.champion_alias}")
    served = pyfunc.predict(frame)
    np.testing.assert_allclose(np.stack(served["embedding"]), np.stack(direct["embedding"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(served["ppp_probs"]).sum(axis=1), 1.0, atol=1e-5)
    assert served["ppp_tier"].between(1, 7).all()
    assert list(served["ppp_tier"]) == list(direct["ppp_tier"])
    # the signature documents the user-side inputs
    sig = pyfunc.metadata.get_input_schema()
    assert "seq_item" in sig.input_names() and "user_dense" in sig.input_names()


def test_incremental_run_starts_from_the_champion(trained) -> None:
    cfg, tables, tmp = trained
    reg = ModelRegistry(cfg.mlflow)
    champ = reg.load()
    ov = (*TINY_WORLD, *SMALL, "training.max_steps_per_epoch=0")
    assert run(train, tmp, "--mode", "incremental", "--date", "2026-11-07", overrides=ov, lake=cfg.lake_root) == 0
    new = reg.load("2")
    for (name, a), (_, b) in zip(champ.model.state_dict().items(), new.model.state_dict().items()):
        assert torch.equal(a, b), name                                # zero steps: exactly the champion
    assert mlflow.get_run(new.run_id).data.params["from_champion_version"] == champ.version
    assert run(train, tmp, "--mode", "incremental", "--date", "2026-11-07", overrides=(*TINY_WORLD, *SMALL),
               lake=cfg.lake_root) == 0
    moved = reg.load("3")
    pairs = zip(champ.model.state_dict().values(), moved.model.state_dict().values())
    diffs = [not torch.equal(a, b) for a, b in pairs]
    assert any(diffs)                                                 # trained on the new day


def test_promotion_gate_blocks_a_worse_model(trained, capsys) -> None:
    cfg, tables, tmp = trained
    reg = ModelRegistry(cfg.mlflow)
    before = reg.champion_version()
    # an untrained network is worse than the champion on every task
    ov = (*TINY_WORLD, *SMALL, "training.max_steps_per_epoch=0", "training.promotion.tolerance=0.0")
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=ov, lake=cfg.lake_root) == 0
    out = capsys.readouterr().out
    assert "BLOCKED: worse than the champion" in out
    assert reg.champion_version() == before
    latest = max(int(v.version) for v in mlflow.MlflowClient().search_model_versions(
        f"name='{cfg.mlflow.registered_model}'"))
    blocked = reg.load(str(latest))
    tags = mlflow.get_run(blocked.run_id).data.tags
    assert tags["promotion.decision"] == "blocked" and tags["promotion.champion_version"] == before


@pytest.mark.cluster
def test_two_process_torch_distributor_run(trained, capsys) -> None:
    cfg, tables, tmp = trained
    ov = (*TINY_WORLD, *SMALL, "training.use_distributor=true", "training.num_processes=2",
          "training.promotion.auto_promote=false")
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=ov, lake=cfg.lake_root) == 0
    out = capsys.readouterr().out
    assert "2 process(es)" in out
    reg = ModelRegistry(cfg.mlflow)
    latest = max(int(v.version) for v in mlflow.MlflowClient().search_model_versions(
        f"name='{cfg.mlflow.registered_model}'"))
    params = mlflow.get_run(reg.load(str(latest)).run_id).data.params
    assert params["num_processes"] == "2"


def test_missing_champion_for_incremental_is_a_clear_error(tiny_pipeline, tmp_path: Path, capsys) -> None:
    cfg, _, _ = tiny_pipeline
    assert run(train, tmp_path, "--mode", "incremental", "--date", "2026-11-07",
               overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "carries the alias 'champion'" in err or "there is none: run --mode full first" in err
