"""The neighbour benchmark's numpy part: exact search, share rates against chance on planted clusters,
the bootstrap interval, the truth's top category, the id alignment, the per-block rows (a tiny but
informative block that the whole-vector cosine ignores) and the published layout read off a tiny
model's user tower (no Spark, no registry)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from benchmarks.bench_neighbours import (Vectors, align, block_unit, bootstrap_interval, chance_rate, nearest,
                                         random_pair_cosines, score, share_rates, squared_norm_shares, top_labels)
from tests.model.conftest import random_batch, tiny_spec
from training.layout import column_runs, published_layout
from training.model import build_model


def brute_force(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u[queries] @ u.T
    sims[np.arange(len(queries)), queries] = -np.inf
    idx = np.argsort(-sims, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def test_chunked_search_equals_brute_force_and_never_returns_the_query() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(97, 8)).astype(np.float32)
    queries = np.sort(rng.choice(97, 20, replace=False))
    for chunk in (3, 7, 1000):  # chunks narrower than k, uneven, and one chunk
        idx, sims = nearest(Vectors("x", "x", x), queries, 5, chunk_rows=chunk)
        want_idx, want_sims = brute_force(x, queries, 5)
        assert (idx == want_idx).all()
        assert np.allclose(sims, want_sims, atol=1e-5)
        assert (idx != queries[:, None]).all()
        assert (np.diff(sims, axis=1) <= 1e-7).all()  # nearest first
    centred = Vectors("c", "c", x, x.mean(axis=0))
    idx, _ = nearest(centred, queries, 5, chunk_rows=7)
    assert (idx == brute_force(x - x.mean(axis=0), queries, 5)[0]).all()


def test_chance_rate_is_the_share_of_other_users_with_the_same_label() -> None:
    assert chance_rate(np.array([0, 0, 0, 1])) == 0.5  # 3·2 / (4·3)
    labels = np.repeat(np.arange(6), 50)
    assert abs(chance_rate(labels) - 49 / 299) < 1e-12
    assert abs(chance_rate(np.arange(10)) - 0.0) < 1e-12


def test_planted_clusters_share_category_far_above_chance_and_tier_only_at_chance() -> None:
    """Vectors encode the category (6 tight, well separated clusters of 50) and say nothing of the tier
    (drawn independently): every neighbour shares the category, the tier only at its chance rate. Behind
    a large component every user shares, raw cosines are all near 1 yet centring recovers the spread."""
    rng = np.random.default_rng(0)
    cats, per, k = 6, 50, 10
    category = np.repeat(np.arange(cats), per)
    tier = rng.integers(0, 3, len(category))
    centres = rng.normal(size=(cats, 16)) * 3.0
    x = (centres[category] + rng.normal(size=(len(category), 16)) * 0.3).astype(np.float32)
    queries = np.sort(rng.choice(len(x), 200, replace=False))
    s = score(Vectors("planted", "planted", x), {"category": category, "tier": tier}, queries, k, seed=0)
    cat, tr = s.rates["category"], s.rates["tier"]
    assert cat.mean == 1.0 and cat.low == 1.0
    assert abs(cat.chance - (per - 1) / (cats * per - 1)) < 1e-12
    assert abs(cat.lift - 1 / cat.chance) < 1e-9
    assert abs(tr.mean - tr.chance) < 0.05 and tr.low < tr.chance < tr.high
    assert s.cosines["first"][0] > s.cosines["kth"][0] > s.cosines["random"][0]

    shared = (x + 100.0).astype(np.float32)  # one component dominates every vector
    raw = score(Vectors("raw", "raw", shared), {"category": category}, queries, k, seed=0)
    assert raw.cosines["random"][0] > 0.99
    fixed = Vectors("centred", "centred", shared, shared.mean(axis=0))
    assert random_pair_cosines(fixed, 2000, np.random.default_rng(0)).mean() < 0.5
    assert score(fixed, {"category": category}, queries, k, seed=0).rates["category"].mean == 1.0


def test_share_rates_counts_matching_neighbours_per_query() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    rates = share_rates(labels, np.array([0, 2]), np.array([[1, 2], [4, 4]]))
    assert rates.tolist() == [0.5, 0.0]


def test_bootstrap_interval_brackets_the_mean_with_the_expected_width() -> None:
    rng = np.random.default_rng(3)
    values = (rng.random(2000) < 0.3).astype(float)
    low, high = bootstrap_interval(values, np.random.default_rng(0))
    assert low < values.mean() < high
    assert 0.03 < high - low < 0.05  # 2 · 1.96 · sqrt(0.21 / 2000) ≈ 0.040


def test_top_labels_takes_the_highest_weight_of_each_row() -> None:
    cats = pa.array([[5, 7, 9], [], [3], [4, 8]], type=pa.list_(pa.int64()))
    weights = pa.array([[0.2, 0.5, 0.3], [], [1.0], [0.6, 0.4]], type=pa.list_(pa.float32()))
    assert top_labels(cats, weights).tolist() == [7, -1, 3, 4]
    assert top_labels(cats.slice(1), weights.slice(1)).tolist() == [-1, 3, 4]  # offsets of a sliced column


def test_align_orders_values_by_id_and_marks_missing() -> None:
    keys = np.array([30, 10, 20], dtype=np.int64)
    values = np.array([3, 1, 2], dtype=np.int64)
    assert align(np.array([10, 40, 30, 20]), keys, values).tolist() == [1, -1, 3, 2]


def test_block_unit_weighs_every_block_equally_whatever_its_norm() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    x[:, [1, 4]] *= 1e-3  # a tiny block, its columns not contiguous
    blocks = (np.array([0, 2, 3, 5, 6]), np.array([1, 4]))
    u = block_unit(x, blocks)
    assert u.shape == (5, 7)
    assert np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-6)
    assert np.allclose(np.linalg.norm(u[:, 5:], axis=1) ** 2, 0.5, atol=1e-6)  # the tiny block: half, not ~0

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    want = np.mean([cos(x[0, b], x[1, b]) for b in blocks])  # the cosine is the mean of the blocks' cosines
    assert abs(float(u[0] @ u[1]) - want) < 1e-6
    one = block_unit(x, blocks[1:])  # one block = that block alone, unit length
    assert np.allclose(one, x[:, [1, 4]] / np.linalg.norm(x[:, [1, 4]], axis=1, keepdims=True), atol=1e-6)
    x[2, [1, 4]] = 0.0  # an all-zero block stays zero
    assert np.allclose(block_unit(x, blocks)[2, 5:], 0.0)
    assert Vectors("b", "b", x, blocks=blocks).dim == 7 and Vectors("b", "b", x, blocks=blocks[1:]).dim == 2


def test_squared_norm_shares_and_column_runs() -> None:
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
    blocks = [np.array([0]), np.array([1, 2])]
    assert np.allclose(squared_norm_shares(x, blocks), [9 / 50, 41 / 50])
    assert np.allclose(squared_norm_shares(x, blocks, chunk_rows=1), [9 / 50, 41 / 50])
    assert column_runs(np.arange(128, 324)) == "dims 128–323"
    assert column_runs(np.array([9, 0, 1, 2, 5])) == "dims 0–2, 5, 9"


def test_a_tiny_informative_block_is_lost_in_the_whole_vector_and_found_by_the_block_rows() -> None:
    """Six categories of 50 users. The vectors are a large block of noise (the category is not in it)
    and a small block, under 1e-4 of the squared norm, that holds the category: the whole-vector cosine
    finds neighbours of the same category at about chance, the small block alone and the blocks
    normalised to equal weight find them far above."""
    rng = np.random.default_rng(0)
    cats, per, k = 6, 50, 10
    category = np.repeat(np.arange(cats), per)
    n = len(category)
    noise = rng.normal(size=(n, 32))
    centres = rng.normal(size=(cats, 8))
    small = (centres[category] + rng.normal(size=(n, 8)) * 0.1) * 0.01
    x = np.concatenate([noise, small], axis=1).astype(np.float32)
    blocks = (np.arange(32), np.arange(32, 40))
    shares = squared_norm_shares(x, blocks)
    assert shares[1] < 1e-3 and abs(shares.sum() - 1.0) < 1e-9
    queries = np.sort(rng.choice(n, 200, replace=False))
    labels = {"category": category}
    whole = score(Vectors("whole", "whole", x), labels, queries, k, seed=0).rates["category"]
    alone = score(Vectors("small", "small", x, blocks=blocks[1:]), labels, queries, k, seed=0).rates["category"]
    noise_only = score(Vectors("noise", "noise", x, blocks=blocks[:1]), labels, queries, k, seed=0).rates["category"]
    balanced = score(Vectors("eq", "eq", x, blocks=blocks), labels, queries, k, seed=0).rates["category"]
    assert whole.low < whole.chance * 1.5 and noise_only.low < noise_only.chance * 1.5
    assert alone.mean > 0.95
    assert balanced.mean > 0.6 and balanced.low > 3 * balanced.chance
    assert balanced.mean > whole.high


def test_published_layout_is_read_off_the_user_tower() -> None:
    """The blocks of a DUPN representation: the dense part, K interests of (category ‖ tags ‖ price), then
    the behaviour-type prices and counts; they partition the published floats. A tower without
    interests (a baseline's) gives no layout."""
    spec = tiny_spec()
    model = build_model(spec).eval()
    blocks = published_layout(model)
    m = spec.model
    r, width = m.representation_dim, m.category_dim + m.tag_dim + 1
    assert [b.key for b in blocks] == ["dense", "interests", "prices"]
    assert (blocks[0].columns == np.arange(r)).all()
    assert (blocks[1].columns == np.arange(r, r + m.attention_heads * width)).all()
    assert (blocks[2].columns == np.arange(r + m.attention_heads * width, model.embedding_dim)).all()
    assert len(blocks[2].columns) == 8
    with torch.no_grad():
        rep = getattr(model, "tower")(random_batch(8))["representation"].numpy()
    assert rep.shape[1] == model.embedding_dim
    assert (rep[:, blocks[0].columns] >= 0).all()  # the dense part is a ReLU's output
    counts = rep[:, blocks[2].columns[1::2]]  # log(1 + behaviours of each type)
    assert (counts >= 0).all() and np.allclose(np.expm1(counts), np.round(np.expm1(counts)), atol=1e-4)
    assert published_layout(build_model(tiny_spec(family="cnn_max"))) == []


def test_published_layout_covers_the_time_decay_pools() -> None:
    """With P time-decay pools, the interests block holds K + P interests and the prices block the
    pools' decayed counts (the last P floats) too; the blocks still partition the published floats."""
    spec = tiny_spec(recency_interests=2)
    model = build_model(spec).eval()
    blocks = published_layout(model)
    m = spec.model
    r, width, n = m.representation_dim, m.category_dim + m.tag_dim + 1, m.attention_heads + 2
    assert [b.key for b in blocks] == ["dense", "interests", "prices"]
    assert (blocks[1].columns == np.arange(r, r + n * width)).all()
    assert (blocks[2].columns == np.arange(r + n * width, model.embedding_dim)).all()
    assert len(blocks[2].columns) == 8 + 2 and "time-decay pools" in blocks[1].label
