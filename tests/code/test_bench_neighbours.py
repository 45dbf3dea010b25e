"""The neighbour benchmark's numpy part: exact search, share rates against chance on planted clusters,
the bootstrap interval, the truth's top category and the id alignment (no Spark)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from benchmarks.bench_neighbours import (Vectors, align, bootstrap_interval, chance_rate, nearest, random_pair_cosines,
                                         score, share_rates, top_labels)


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
