"""Data tests of outputs/user_representations as the nightly job publishes it."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from core import tables as t
from tests.conftest import TINY_END


def test_schema_matches_the_contract(tiny_published) -> None:
    from deltalake import DeltaTable

    cfg, tables, _ = tiny_published
    df = tables.read(t.USER_REPRESENTATIONS)
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("user_id", "bigint"), ("embedding", "array<float>"), ("ppp_tier", "int"), ("ppp_probs", "array<float>"),
        ("model_name", "string"), ("model_version", "string"), ("dt", "string")]
    delta = DeltaTable(tables.uri(t.USER_REPRESENTATIONS))
    assert delta.metadata().partition_columns == ["dt"]
    assert {f.name for f in delta.schema().fields if not f.nullable} == set(t.USER_REPRESENTATIONS.columns)


def test_one_row_per_served_user_with_finite_vectors(tiny_published) -> None:
    from registry.models import ModelRegistry

    cfg, tables, _ = tiny_published
    # the published length is the model's (the representation and the pooled interest keys)
    dim = ModelRegistry(cfg.mlflow).load().model.embedding_dim
    for day in ("2026-11-07", TINY_END):
        out = tables.read(t.USER_REPRESENTATIONS, dt=day)
        served = tables.read(t.USER_SEQUENCES, dt=day)
        assert out.count() == served.count() == out.select("user_id").distinct().count()
        assert out.join(served, "user_id", "left_anti").count() == 0
        rows = out.collect()  # tiny
        emb = np.array([r.embedding for r in rows], dtype=np.float64)
        assert emb.shape[1] == dim and np.isfinite(emb).all()
        probs = np.array([r.ppp_probs for r in rows], dtype=np.float64)
        assert probs.shape[1] == 7 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
        tiers = np.array([r.ppp_tier for r in rows])
        assert ((tiers >= 1) & (tiers <= 7)).all()
        assert (tiers == probs.argmax(axis=1) + 1).all()
        assert {r.model_name for r in rows} == {cfg.mlflow.registered_model}
        assert out.where(F.col("model_version").isNull()).count() == 0


def test_commit_records_model_and_inputs(tiny_published) -> None:
    _, tables, _ = tiny_published
    meta = tables.last_metadata(t.USER_REPRESENTATIONS)
    assert meta["job"] == "publish_user_representations" and meta["dt"] == TINY_END
    assert meta["model_version"] and meta["model_run_id"]
    assert meta["embedding_dim"] == len(tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).first().embedding)
    assert "features/user_sequences" in meta["inputs"] and "raw/events" in meta["inputs"]
