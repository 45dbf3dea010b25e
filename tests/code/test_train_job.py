"""jobs/train.py on the tiny world: selection on validation and one scoring of the test split, the MLflow
run, the registry round trip, the paired-bootstrap promotion gate, incremental training on the
validation day, a corrupt artifact, and a 2-process TorchDistributor run. Real MLflow (SQLite), real
Petastorm, real Delta."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from core import protocol as pr
from core import tables as t
from jobs import publish_user_representations as publish
from jobs import train
from registry.models import ModelRegistry, user_outputs
from tests.conftest import SMALL, TINY_END, TINY_WORLD, TRAIN_DAYS, VALID_DAY
from tests.conftest import make_config
from tests.helpers import run

# The champion trains long enough to be better than an untrained network beyond noise (the gate test).
CHAMPION = (*TINY_WORLD, *SMALL, "training.epochs=3", "training.lr=0.01")


@pytest.fixture(scope="module")
def trained(tiny_pipeline, tmp_path_factory):  # noqa: ANN001, ANN201
    """Its own MLflow store (these tests move the champion alias), one full run promoted; with the
    run's printed summary."""
    _, tables, lake_tmp = tiny_pipeline
    tmp = tmp_path_factory.mktemp("mlflow_train")
    lake = f"lake_root={lake_tmp / 'lake'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=(*CHAMPION, lake)) == 0
    return make_config(tmp, *CHAMPION, lake), tables, tmp, out.getvalue()


def user_frame(tables, n: int = 32):  # noqa: ANN001, ANN201
    return tables.read(t.USER_SEQUENCES, dt=TINY_END).limit(n).toPandas()


def artifact(run_id: str, path: str) -> dict:
    return json.loads(Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{path}")).read_text())


def latest_version(cfg) -> str:  # noqa: ANN001
    return str(max(int(v.version) for v in mlflow.MlflowClient().search_model_versions(
        f"name='{cfg.mlflow.registered_model}'")))


def test_full_run_selects_on_validation_and_scores_the_test_split_once(trained) -> None:
    cfg, tables, tmp, out = trained
    reg = ModelRegistry(cfg.mlflow)
    assert reg.champion_version() == "1"
    loaded = reg.load()
    run_ = mlflow.get_run(loaded.run_id)
    m = run_.data.metrics
    for name in ("test_ctr_auc", "test_cvr_auc", "test_ctcvr_auc", "test_follow_auc", "test_ppp_accuracy",
                 "test_l2r_ndcg10", "selected_selection_score", "selected_valid_ctr_auc", "valid_ctr_auc",
                 "selection_score", "loss_ctr", "train_samples", "train_samples_per_second"):
        assert name in m, name
    client = mlflow.MlflowClient()
    # the validation split is scored evals_per_epoch times; the kept weights are the best scoring's
    scores = client.get_metric_history(loaded.run_id, "selection_score")
    valid_auc = client.get_metric_history(loaded.run_id, "valid_ctr_auc")
    curve = artifact(loaded.run_id, "selection/validation_curve.json")
    cap = cfg.training.early_stopping.evals_per_epoch * cfg.training.epochs
    assert len(scores) == len(valid_auc) == len(curve["evals"]) > 1
    assert len(scores) == cap or (curve["stopped_early"] and len(scores) < cap and "stopped early" in out)
    # the kept weights are the best scoring's (a later one counts as better only above min_delta)
    at_step = {s.step: s.value for s in scores}
    selected = m["selected_selection_score"]
    assert at_step[int(m["selected_step"])] == pytest.approx(selected)
    assert all(s.value <= selected + cfg.training.early_stopping.min_delta + 1e-9 for s in scores)
    assert m["selected_valid_ctr_auc"] == pytest.approx(next(v.value for v in valid_auc
                                                             if v.step == int(m["selected_step"])))
    # the test split is scored once, after selection, with nothing logged per step
    for name in ("test_ctr_auc", "test_ppp_accuracy"):
        assert len(client.get_metric_history(loaded.run_id, name)) == 1, name
    assert m["test_ppp_rows"] > 0 and m["test_ctr_rows"] == tables.read(t.IMPRESSIONS, dt=TINY_END).count()
    assert curve["selected"]["step"] == m["selected_step"]
    params = run_.data.params
    assert params["mode"] == "full" and params["tasks"] == "ctr,l2r,follow,ppp"
    assert params["valid_days"] == VALID_DAY and params["test_days"] == TINY_END
    assert params["select_on_validation"] == "True"
    assert run_.data.tags["promotion.decision"] == "promoted"
    arts = {a.path for a in client.list_artifacts(loaded.run_id)}
    assert {"config", "lineage", "plots", "analysis", "promotion", "selection"} <= arts
    plots = {a.path for a in client.list_artifacts(loaded.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/attention_by_behaviour_and_age.png"}
    assert len(client.get_metric_history(loaded.run_id, "loss_ctr")) >= 1
    lineage = artifact(loaded.run_id, "lineage/inputs_stats_encoding.json")
    assert lineage["feature_stats_day"] == TINY_END
    assert lineage["training_examples"]["test_days"] == [TINY_END]
    assert lineage["training_examples"]["build"]["splits"]["valid"] == [VALID_DAY]
    assert {"seq_log_price", "item_log_price", "user_dense", "rank_features"} <= set(lineage["normalisation"])
    # the first version has no champion to beat
    decision = artifact(loaded.run_id, "promotion/decision.json")
    assert decision["promote"] is True and decision["reason"] == "no current champion"
    # the summary: the validation numbers of the selected weights, then the test line
    lines = out.splitlines()
    test_line = next(ln for ln in lines if ln.startswith("test: "))
    assert f"ctr_auc={m['test_ctr_auc']:.4f}" in test_line and "ppp_accuracy=" in test_line
    assert any(ln.startswith("trained ") and "selected step" in ln and "validation: ctr_auc=" in ln for ln in lines)
    assert "promotion of version 1: PROMOTED: no current champion" in out


def test_registry_round_trip_gives_the_same_outputs(trained) -> None:
    cfg, tables, _, _ = trained
    reg = ModelRegistry(cfg.mlflow)
    loaded = reg.load()
    frame = user_frame(tables)
    direct = user_outputs(loaded.model, frame)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.champion_alias}")
    served = pyfunc.predict(frame)
    emb = np.stack(served["embedding"])
    np.testing.assert_allclose(emb, np.stack(direct["embedding"]), rtol=1e-5, atol=1e-6)
    assert emb.shape == (len(frame), loaded.model.embedding_dim)
    np.testing.assert_allclose(np.stack(served["ppp_probs"]).sum(axis=1), 1.0, atol=1e-5)
    assert served["ppp_tier"].between(1, 7).all()
    assert list(served["ppp_tier"]) == list(direct["ppp_tier"])
    # the signature documents the user-side inputs
    sig = pyfunc.metadata.get_input_schema()
    assert "seq_item" in sig.input_names() and "user_dense" in sig.input_names()


def trained_examples(tables, day: str) -> int:  # noqa: ANN001
    """Examples of ``day`` the losses train on: CTR slots with weight, L2R slots, weighted follow
    impressions and the tier labels of training users only."""
    df = tables.read(t.TRAINING_EXAMPLES, dt=day)
    ctr = df.select(F.explode(F.slice("ctr_weight", F.lit(1), F.col("n_items"))).alias("w")).where(F.col("w") > 0)
    l2r = df.where(F.col("l2r") == 1).agg(F.sum("n_items")).first()[0] or 0
    fol = df.where((F.col("kind") == "follow") & (F.col("follow_weight") > 0)).count()
    ppp = df.where((F.col("kind") == "ppp") & (F.col("ppp_user") == pr.PPP_TRAIN_USER)).count()
    return ctr.count() + l2r + fol + ppp


def test_incremental_run_on_the_validation_day_starts_from_the_champion(trained) -> None:
    cfg, tables, tmp, _ = trained
    reg = ModelRegistry(cfg.mlflow)
    champ = reg.load()
    ov = (*TINY_WORLD, *SMALL, "training.max_steps_per_epoch=0")
    assert run(train, tmp, "--mode", "incremental", "--date", VALID_DAY, overrides=ov, lake=cfg.lake_root) == 0
    new = reg.load("2")
    for (name, a), (_, b) in zip(champ.model.state_dict().items(), new.model.state_dict().items()):
        assert torch.equal(a, b), name                                # zero steps: exactly the champion
    assert mlflow.get_run(new.run_id).data.params["from_champion_version"] == champ.version
    assert run(train, tmp, "--mode", "incremental", "--date", VALID_DAY, overrides=(*TINY_WORLD, *SMALL),
               lake=cfg.lake_root) == 0
    moved = reg.load("3")
    pairs = zip(champ.model.state_dict().values(), moved.model.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in pairs)               # trained on the new day
    r = mlflow.get_run(moved.run_id).data
    assert r.params["mode"] == "incremental" and r.params["train_days"] == f"{VALID_DAY}..{VALID_DAY}"
    assert "test_ctr_auc" in r.metrics and "test_ppp_accuracy" in r.metrics
    # one pass over the day's examples: the held-out users' tier labels of that day are not among them
    held_out = tables.read(t.TRAINING_EXAMPLES, dt=VALID_DAY).where(
        (F.col("kind") == "ppp") & (F.col("ppp_user") == pr.PPP_VALID_USER)).count()
    assert held_out > 0
    assert r.metrics["train_samples"] == trained_examples(tables, VALID_DAY)


def test_incremental_training_never_trains_on_a_test_day(trained, capsys) -> None:
    cfg, _, tmp, _ = trained
    assert run(train, tmp, "--mode", "incremental", "--date", TINY_END, overrides=(*TINY_WORLD, *SMALL),
               lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train failed: training days {TINY_END} are test days")


def test_full_training_on_a_validation_day_is_refused(trained, capsys) -> None:
    cfg, _, tmp, _ = trained
    assert run(train, tmp, "--mode", "full", "--start", "2026-11-05", "--end", VALID_DAY,
               overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train failed: training days {VALID_DAY} are validation days")


def test_promotion_gate_blocks_a_worse_model(trained, capsys) -> None:
    cfg, tables, tmp, _ = trained
    reg = ModelRegistry(cfg.mlflow)
    before = reg.champion_version()
    # an untrained network is worse than the champion beyond the bootstrap interval
    ov = (*TINY_WORLD, *SMALL, "training.max_steps_per_epoch=0", "training.promotion.resamples=200")
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=ov, lake=cfg.lake_root) == 0
    out = capsys.readouterr().out
    assert "BLOCKED: worse than the champion beyond noise" in out and "candidate - champion [95% CI" in out
    assert reg.champion_version() == before
    blocked = reg.load(latest_version(cfg))
    data = mlflow.get_run(blocked.run_id).data
    assert data.tags["promotion.decision"] == "blocked" and data.tags["promotion.champion_version"] == before
    decision = artifact(blocked.run_id, "promotion/decision.json")
    assert decision["promote"] is False and decision["champion_version"] == before
    assert decision["confidence"] == "95% CI, 200 user resamples"
    intervals = decision["intervals"]
    assert {"ctr_auc", "follow_auc", "ppp_accuracy"} <= set(intervals)
    for name, iv in intervals.items():
        assert iv["low"] <= iv["high"], name
        assert iv["delta"] == pytest.approx(iv["candidate"] - iv["champion"]), name
        assert data.metrics[f"gate_high_{name}"] == pytest.approx(iv["high"]), name
    worse = [name for name, iv in intervals.items() if iv["high"] < 0]
    assert worse and all(name in decision["reason"] for name in worse)
    # the champion was scored on the very test examples the candidate was
    champion_run = mlflow.get_run(reg.load(before).run_id).data.metrics
    assert intervals["ctr_auc"]["champion"] == pytest.approx(champion_run["test_ctr_auc"])


@pytest.mark.reliability(
    "faults",
    "a truncated or corrupt model_state.pt in the registry",
    "one line naming the model version and the path")
def test_a_corrupt_model_artifact_is_a_one_line_error_naming_the_version(trained, capsys) -> None:
    from registry.models import log_model
    from registry.tracking import configure_mlflow

    cfg, _, tmp, _ = trained
    reg = ModelRegistry(cfg.mlflow)
    champion = reg.champion_version()
    # a version whose model_state.pt is the champion's, truncated
    with mlflow.start_run(experiment_id=configure_mlflow(cfg.mlflow), run_name="corrupt"):
        uri = log_model(reg.state_bytes(champion)[:4096])
    version = reg.register(uri)
    assert run(publish, tmp, "--date", TINY_END, "--model-version", version, overrides=(*TINY_WORLD, *SMALL),
               lake=cfg.lake_root) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith(f"publish_user_representations failed: version {version} of registered model "
                              f"'{cfg.mlflow.registered_model}': cannot read ")
    assert "corrupt" in err[-1] and not any("Traceback" in ln for ln in err)
    assert reg.champion_version() == champion


@pytest.mark.parametrize("content", [
    pytest.param(b"truncated", id="truncated"),
    pytest.param(b"not a torch file", id="garbage"),
    pytest.param(b"", id="empty"),
])
def test_load_state_file_names_what_it_loads_when_the_file_is_corrupt(tmp_path: Path, content: bytes) -> None:
    from core.errors import PlatformError
    from tests.model.conftest import tiny_spec
    from training.inference import load_state_file
    from training.model import build_model
    from training.trainer import dump_state

    state = dump_state(build_model(tiny_spec()))
    path = tmp_path / "model_state.pt"
    path.write_bytes(state[:4096] if content == b"truncated" else content)
    with pytest.raises(PlatformError) as info:
        load_state_file(path, "version 7 of registered model 'm'")
    msg = str(info.value)
    assert msg.startswith(f"version 7 of registered model 'm': cannot read {path} (") and "\n" not in msg
    # the intact state loads
    path.write_bytes(state)
    assert load_state_file(path).embedding_dim > 0


@pytest.mark.cluster
def test_two_process_torch_distributor_run(trained, capsys) -> None:
    cfg, tables, tmp, _ = trained
    ov = (*TINY_WORLD, *SMALL, "training.use_distributor=true", "training.num_processes=2",
          "training.promotion.auto_promote=false")
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=ov, lake=cfg.lake_root) == 0
    out = capsys.readouterr().out
    assert "2 process(es)" in out and "test: ctr_auc=" in out
    reg = ModelRegistry(cfg.mlflow)
    params = mlflow.get_run(reg.load(latest_version(cfg)).run_id).data.params
    assert params["num_processes"] == "2"


def test_missing_champion_for_incremental_is_a_clear_error(tiny_pipeline, tmp_path: Path, capsys) -> None:
    cfg, _, _ = tiny_pipeline
    assert run(train, tmp_path, "--mode", "incremental", "--date", VALID_DAY,
               overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("train failed: incremental training warm-starts from the 'champion' version of "
                   "'dupn_user_model', and there is none: run --mode full first")
