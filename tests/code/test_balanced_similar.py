"""The layout of the published vector: recorded by the nightly job in its commit, read back by
``jobs/query.py similar``, which then ranks by the mean of the blocks' cosines (checked against
numpy); a partition without a recorded layout falls back to the whole-vector cosine."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import tables as t
from core.delta import get_tables
from core.errors import PlatformError
from features import representations as reps
from features.vector_index import default_nlist
from jobs import query
from tests.conftest import SMALL, TINY_END, TINY_WORLD, make_config
from tests.helpers import run
from tests.model.conftest import tiny_spec
from training.layout import blocks_from_metadata, layout_metadata, published_layout, runs
from training.model import build_model

OV = (*TINY_WORLD, *SMALL)
SPEC = t.USER_REPRESENTATIONS
# the blocks of the platform's DUPN vector (conf/local.yaml: time-decay pools and the category profile)
BLOCKS = ["dense", "interests", "prices", "profile"]


# ---------------------------------------------------------------------- no Spark
def test_layout_metadata_round_trips_and_is_json() -> None:
    model = build_model(tiny_spec()).eval()
    blocks = published_layout(model)
    raw = json.loads(json.dumps(layout_metadata(blocks)))
    m = tiny_spec().model
    r = m.representation_dim
    assert raw[0] == {"block": "dense", "runs": [[0, r - 1]]}
    assert [b["block"] for b in raw] == ["dense", "interests", "prices"]
    back = blocks_from_metadata(raw, model.embedding_dim)
    assert [b.key for b in back] == [b.key for b in blocks]
    assert all((a.columns == b.columns).all() for a, b in zip(back, blocks))
    assert runs(np.array([9, 0, 1, 2, 5])) == [(0, 2), (5, 5), (9, 9)] and runs(np.array([], np.int64)) == []


@pytest.mark.parametrize("raw, problem", [
    ([{"block": "a", "runs": [[0, 3]]}, {"block": "b", "runs": [[3, 5]]}], "overlap or do not cover the 6"),
    ([{"block": "a", "runs": [[0, 2]]}, {"block": "b", "runs": [[4, 5]]}], "overlap or do not cover the 6"),
    ([{"block": "a", "runs": [[0, 6]]}], "overlap or do not cover the 6"),
    ([{"block": "a", "runs": [[3, 1]]}], "'runs': [[first, last], ...]"),
    ([{"name": "a", "runs": [[0, 5]]}], "'runs': [[first, last], ...]"),
    ({"block": "a"}, "not a non-empty list"),
    ([], "not a non-empty list"),
])
def test_a_malformed_or_mismatched_layout_is_refused(raw: object, problem: str) -> None:
    with pytest.raises(PlatformError, match="recorded layout") as info:
        blocks_from_metadata(raw, 6)
    assert problem in str(info.value)


def test_a_layout_may_split_a_block_into_runs() -> None:
    blocks = blocks_from_metadata([{"block": "a", "runs": [[0, 1], [4, 5]]}, {"block": "b", "runs": [[2, 3]]}], 6)
    assert blocks[0].columns.tolist() == [0, 1, 4, 5] and blocks[1].columns.tolist() == [2, 3]


# ---------------------------------------------------------------------- the published table
def q(published, *args: str) -> int:  # noqa: ANN001
    cfg, _, tmp = published
    return run(query, tmp, *args, overrides=OV, lake=cfg.lake_root)


def vectors(tables, day: str = TINY_END) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    rows = tables.read(SPEC, dt=day).select("user_id", "embedding").collect()
    return np.array([r.user_id for r in rows]), np.array([r.embedding for r in rows], dtype=np.float64)


def cosines(x: np.ndarray, target: int) -> np.ndarray:
    return x @ x[target] / (np.maximum(np.linalg.norm(x, axis=1), 1e-12) * max(np.linalg.norm(x[target]), 1e-12))


def top(ids: np.ndarray, score: np.ndarray, target: int, k: int) -> tuple[list[int], list[float]]:
    score = score.copy()
    score[target] = -np.inf
    order = np.lexsort((ids, -score))[:k]  # by score, ties by user id (as the query orders them)
    return [int(i) for i in ids[order]], [float(s) for s in score[order]]


def test_the_published_commit_records_the_models_layout(tiny_published) -> None:
    from registry.models import ModelRegistry

    cfg, tables, _ = tiny_published
    model = ModelRegistry(cfg.mlflow).load().model
    dim = model.embedding_dim
    commits = [c for c in tables.history(SPEC) if c.metadata.get("job") == "publish_user_representations"]
    assert {c.metadata["dt"] for c in commits} >= {"2026-11-07", TINY_END}
    for c in commits:
        layout = c.metadata["layout"]
        assert layout == layout_metadata(published_layout(model))
        assert [b["block"] for b in layout] == BLOCKS
        covered = sorted(i for b in layout for a, z in b["runs"] for i in range(a, z + 1))
        assert covered == list(range(dim)) and c.metadata["embedding_dim"] == dim  # every column, once


def test_similar_ranks_by_the_mean_of_the_blocks_cosines(tiny_published, capsys) -> None:
    from registry.models import ModelRegistry

    cfg, tables, _ = tiny_published
    blocks = published_layout(ModelRegistry(cfg.mlflow).load().model)  # from the model, not the commit
    ids, emb = vectors(tables)
    assert [b.key for b in blocks] == BLOCKS
    for target in (0, 7, len(ids) - 1):
        balanced = np.mean([cosines(emb[:, b.columns], target) for b in blocks], axis=0)
        whole = cosines(emb, target)
        assert np.abs(balanced - whole).max() > 1e-3  # the two measures differ on this data
        want_ids, want_scores = top(ids, balanced, target, 5)
        for how in (["--exact"], []):  # the exact scan on Spark; the date's index (all lists scanned: exact too)
            assert q(tiny_published, "--json", "similar", str(ids[target]), "--k", "5", *how) == 0
            obj = json.loads(capsys.readouterr().out)
            assert obj["measure"] == "balanced" and obj["blocks"] == BLOCKS
            assert obj["method"] == ("exact" if how else "index")
            assert obj["layout_version"] == tables.version(SPEC)  # the last commit wrote TINY_END
            assert [n["user_id"] for n in obj["neighbours"]] == want_ids
            assert np.allclose([n["cosine"] for n in obj["neighbours"]], want_scores, atol=1e-5)
    assert q(tiny_published, "similar", str(ids[0]), "--k", "3", "--measure", "balanced", "--exact") == 0
    assert capsys.readouterr().out.startswith(
        f"3 nearest users to {ids[0]} (balanced cosine over 4 blocks: dense, interests, prices, profile; exact) "
        f"dt={TINY_END}:")
    assert q(tiny_published, "similar", str(ids[0]), "--k", "3") == 0
    lists = default_nlist(len(ids))  # fewer than the default nprobe on this small table: every list scanned
    assert capsys.readouterr().out.startswith(
        f"3 nearest users to {ids[0]} (balanced cosine over 4 blocks: dense, interests, prices, profile; index: "
        f"{lists} of {lists} lists scanned) dt={TINY_END}:")


def test_the_layout_comes_from_the_commit_that_wrote_the_partition(tiny_published, spark, tmp_path: Path,
                                                                   capsys) -> None:
    """A copy of the table: TINY_END written with the recorded layout (v0), then 2026-11-07 without
    one (v1). At v1, TINY_END still ranks by blocks (the layout of v0); 2026-11-07 falls back to the
    whole-vector cosine, and asking it for ``balanced`` is a one-line error."""
    cfg, tables, _ = tiny_published
    layout = next(c.metadata["layout"] for c in tables.history(SPEC) if c.metadata.get("dt") == TINY_END)
    copy = get_tables(spark, make_config(tmp_path, *OV))
    copy.replace_partition(tables.read(SPEC, dt=TINY_END), SPEC, TINY_END,
                           metadata={"dt": TINY_END, "layout": layout})
    copy.replace_partition(tables.read(SPEC, dt="2026-11-07"), SPEC, "2026-11-07", metadata={"dt": "2026-11-07"})
    assert copy.version(SPEC) == 1

    ids, emb = vectors(copy, TINY_END)
    found = reps.similar(copy, reps.snapshot(copy, TINY_END), int(ids[2]), 4)
    assert found.measure == "balanced" and found.layout_version == 0 and len(found.blocks) == len(BLOCKS)
    columns = [b.columns for b in blocks_from_metadata(layout, emb.shape[1])]
    want = top(ids, np.mean([cosines(emb[:, c], 2) for c in columns], axis=0), 2, 4)
    assert [r["user_id"] for r in found.rows] == want[0]

    old_ids, old_emb = vectors(copy, "2026-11-07")
    plain = reps.similar(copy, reps.snapshot(copy, "2026-11-07"), int(old_ids[1]), 4)
    assert plain.measure == "cosine" and plain.blocks == () and plain.layout_version is None
    assert [r["user_id"] for r in plain.rows] == top(old_ids, cosines(old_emb, 1), 1, 4)[0]

    lake = str(tmp_path / "lake")
    assert run(query, tmp_path, "similar", str(old_ids[1]), "--date", "2026-11-07", "--measure", "balanced",
               overrides=OV, lake=lake) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "query failed: outputs/user_representations dt=2026-11-07 (version 1) has no recorded layout (its model's "
        "vector has no blocks, or the commit that wrote it predates layouts or left the history): use --measure "
        "cosine")
    assert run(query, tmp_path, "similar", str(old_ids[1]), "--date", "2026-11-07", overrides=OV, lake=lake) == 0
    assert "(cosine over the whole vector; exact) dt=2026-11-07:" in capsys.readouterr().out
