"""The nearest-neighbour index of a published date (features/vector_index.py): its search space, its
build from Parquet files, and the nightly job / ``query similar`` path that uses it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import tables as t
from core.errors import PlatformError
from features import representations as reps
from features import vector_index as vi
from jobs import query
from tests.code.test_publish_query import q
from tests.conftest import TINY_END
from tests.helpers import run

BLOCKS = [[(0, 3), (10, 11)], [(4, 9)], [(12, 15)]]  # a block may be several runs of columns


def write_vectors(path: Path, ids: np.ndarray, emb: np.ndarray, files: int = 3) -> list[str]:
    """``ids``/``emb`` as ``files`` Parquet files with the published columns the index reads."""
    out = []
    for i, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        f = str(path / f"part-{i}.parquet")
        pq.write_table(pa.table({"user_id": pa.array(ids[part], pa.int64()),
                                 "embedding": pa.array(list(emb[part].astype(np.float32)), pa.list_(pa.float32()))}),
                       f, row_group_size=97)
        out.append(f)
    return out


def clustered(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim)) * 3
    emb = centres[rng.integers(0, 40, n)] + rng.normal(size=(n, dim))
    return rng.permutation(np.arange(10_000, 10_000 + n)), emb


def exact_top(ids: np.ndarray, emb: np.ndarray, blocks: list | None, row: int, k: int) -> list[int]:
    x = vi.search_space(emb, blocks).astype(np.float64)
    scores = x @ x[row]
    scores[row] = -np.inf
    order = sorted(range(len(ids)), key=lambda i: (-round(scores[i], 6), ids[i]))
    return [int(ids[i]) for i in order[:k]]


def test_the_search_space_turns_the_balanced_measure_into_an_inner_product() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 16)) * rng.uniform(0.01, 100, size=16)  # blocks of very different scale
    x = vi.search_space(emb, BLOCKS)
    for a, b in ((0, 1), (5, 29)):
        cos = []
        for spans in BLOCKS:
            cols = np.concatenate([np.arange(s, e + 1) for s, e in spans])
            u, v = emb[a, cols], emb[b, cols]
            cos.append(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
        assert x[a] @ x[b] == pytest.approx(np.mean(cos), abs=1e-5)
    whole = vi.search_space(emb, None)
    assert whole[2] @ whole[3] == pytest.approx(emb[2] @ emb[3] / np.linalg.norm(emb[2]) / np.linalg.norm(emb[3]),
                                                abs=1e-5)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.all(vi.search_space(np.zeros((1, 16)), BLOCKS) == 0)  # a zero block stays zero, no NaN


@pytest.mark.parametrize("blocks", [BLOCKS, None], ids=["balanced", "cosine"])
def test_scanning_every_list_is_the_exact_search_and_fewer_lists_find_most_of_it(tmp_path: Path, blocks) -> None:
    ids, emb = clustered(2_000)
    built = vi.build(write_vectors(tmp_path, ids, emb), str(tmp_path / "idx"), blocks, nprobe=4, train_rows=2_000)
    m = built.manifest
    assert m["rows"] == 2_000 and m["dim"] == 16 and m["nlist"] == vi.default_nlist(2_000) == 45
    assert m["measure"] == ("cosine" if blocks is None else "balanced")
    index = vi.open_index(built.path)
    hits = []
    for row in range(0, 2_000, 97):
        want = exact_top(ids, emb, blocks, row, 10)
        full = index.search(emb[row], 10, exclude=int(ids[row]), nprobe=m["nlist"])
        assert [u for u, _ in full] == want  # every list scanned: the exact answer, self excluded
        few = index.search(emb[row], 10, exclude=int(ids[row]))
        hits.append(len({u for u, _ in few} & set(want)) / 10)
    assert np.mean(hits) >= 0.8  # 4 of 45 lists on clustered data
    assert np.mean(hits) < 1.0 or m["nprobe"] < m["nlist"]


def test_build_is_atomic_and_a_missing_or_foreign_index_is_refused(tmp_path: Path) -> None:
    ids, emb = clustered(300)
    paths = write_vectors(tmp_path, ids, emb)
    out = str(tmp_path / "idx")
    vi.build(paths, out, None)
    assert sorted(os.listdir(out)) == [vi.INDEX_FILE, vi.LISTS_FILE, vi.MANIFEST]  # the shards merged and removed
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    vi.build(paths, out, BLOCKS)  # a rebuild replaces it whole
    assert vi.open_index(out).manifest["measure"] == "balanced"
    with pytest.raises(PlatformError, match="no vector index at"):
        vi.open_index(str(tmp_path / "nothing"))
    manifest = json.loads(Path(out, vi.MANIFEST).read_text())
    Path(out, vi.MANIFEST).write_text(json.dumps({**manifest, "kind": "hnsw"}))
    with pytest.raises(PlatformError, match="not 'faiss_ivf_flat': rebuild it"):
        vi.open_index(out)


def test_shards_merge_into_the_same_index_and_the_folder_can_move(tmp_path: Path) -> None:
    """The builder holds one shard at a time; the merged lists answer as one shard does, and the lists
    file is found beside the index wherever the folder is."""
    ids, emb = clustered(2_000)
    paths = write_vectors(tmp_path, ids, emb)
    one = vi.build(paths, str(tmp_path / "one"), BLOCKS, nprobe=4, train_rows=2_000)
    many = vi.build(paths, str(tmp_path / "many"), BLOCKS, nprobe=4, train_rows=2_000, batch_rows=128,
                    shard_rows=300)
    assert (one.manifest["shards"], many.manifest["shards"]) == (1, 6)  # 5 shards of 3 batches of 128 rows, 1 of 80
    os.rename(many.path, tmp_path / "moved")
    a, b = vi.open_index(one.path), vi.open_index(str(tmp_path / "moved"))
    for row in range(0, 2_000, 101):
        assert b.search(emb[row], 10, exclude=int(ids[row])) == a.search(emb[row], 10, exclude=int(ids[row]))
    os.remove(tmp_path / "moved" / vi.LISTS_FILE)
    with pytest.raises(PlatformError, match="lacks its lists file lists.ivfdata: rebuild it"):
        vi.open_index(str(tmp_path / "moved"))


def test_bad_vectors_are_refused_with_the_fix(tmp_path: Path) -> None:
    ids, emb = clustered(100)
    emb[57, 3] = np.nan
    with pytest.raises(PlatformError, match="non-finite value: re-publish the date"):
        vi.build(write_vectors(tmp_path, ids, emb), str(tmp_path / "idx"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlatformError, match="no rows to index"):
        vi.build(write_vectors(tmp_path / "empty", ids[:0], emb[:0], files=1), str(tmp_path / "e"), None)


def test_the_nightly_job_records_and_builds_the_index_and_similar_uses_it_without_spark(
        tiny_published, capsys, monkeypatch) -> None:
    """Each published date's commit records its index path; the index holds that date's users; ``similar``
    answers from it without a Spark session, the same neighbours as ``--exact``; with the index gone it
    falls back to the exact scan."""
    _, tables, _ = tiny_published
    commit = next(c for c in tables.history(t.USER_REPRESENTATIONS) if c.metadata.get("dt") == TINY_END)
    recorded = commit.metadata["index"]
    assert recorded["path"] == f"_index/dt={TINY_END}/{commit.metadata['run_id']}"
    path = reps.index_dir(tables, recorded["path"])
    manifest = vi.open_index(path).manifest
    assert manifest["rows"] == tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).count()
    assert manifest["table_version"] == commit.version and manifest["dt"] == TINY_END
    uid = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).orderBy("user_id").first().user_id

    assert q(tiny_published, "--json", "similar", str(uid), "--k", "4", "--exact") == 0
    exact = json.loads(capsys.readouterr().out)

    def no_spark(*_a: object, **_k: object) -> None:
        raise AssertionError("the index path asked for a Spark session")

    with monkeypatch.context() as m:
        m.setattr(query, "get_spark", no_spark)
        assert q(tiny_published, "--json", "similar", str(uid), "--k", "4") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["method"] == "index" and exact["method"] == "exact"
    assert found["index"]["commit_version"] == commit.version and found["index"]["path"] == recorded["path"]
    assert [n["user_id"] for n in found["neighbours"]] == [n["user_id"] for n in exact["neighbours"]]
    assert [n["ppp_tier"] for n in found["neighbours"]] == [n["ppp_tier"] for n in exact["neighbours"]]
    assert np.allclose([n["cosine"] for n in found["neighbours"]], [n["cosine"] for n in exact["neighbours"]],
                       atol=1e-5)

    saved = str(Path(path).with_name("saved"))
    shutil.move(path, saved)
    try:
        assert q(tiny_published, "--json", "similar", str(uid), "--k", "4") == 0
        assert json.loads(capsys.readouterr().out)["method"] == "exact"
    finally:
        shutil.move(saved, path)


def test_a_failed_index_build_leaves_the_date_published(tiny_model, capsys, monkeypatch) -> None:
    from jobs import publish_user_representations as publish
    from tests.conftest import SMALL, TINY_WORLD

    cfg, tables, tmp = tiny_model

    def broken(*_a: object, **_k: object) -> None:
        raise PlatformError("disk full (test)")

    before = tables.version(t.USER_REPRESENTATIONS) if tables.exists(t.USER_REPRESENTATIONS) else -1
    try:
        with monkeypatch.context() as m:
            m.setattr(vi, "build", broken)
            assert run(publish, tmp, "--date", TINY_END, overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 0
        out = capsys.readouterr().out
        assert f"warning: the vector index of dt={TINY_END} was not built (disk full (test)); query similar" in out
        assert tables.version(t.USER_REPRESENTATIONS) == before + 1
    finally:  # leave the shared lake as the other tests expect it: TINY_END published with its index
        assert run(publish, tmp, "--date", TINY_END, overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 0
    assert "removed 1 earlier index(es) of dt=" in capsys.readouterr().out  # the index before the failed build
    newest = next(c for c in tables.history(t.USER_REPRESENTATIONS) if c.metadata.get("dt") == TINY_END)
    folder = Path(reps.index_dir(tables, newest.metadata["index"]["path"]))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # one index per date: the newest run's
