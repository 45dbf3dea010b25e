"""Do the published user vectors tell users apart? Their nearest neighbours against the demo world's truth.

    .venv/bin/python -m benchmarks.bench_neighbours --config conf/local.yaml [--date D] [--k 10] [--queries 2000]

Reads partition D (default: the latest) of ``outputs/user_representations`` (``user_id`` and
``embedding`` only, into one float32 matrix; refused above ``--max-matrix-mb``), draws
``--queries`` users with ``--seed`` and finds each one's ``--k`` nearest other published users by
cosine similarity (exact: matrix products over chunks of the population). The neighbours are
scored against the demo world's ground truth, which nothing else here reads: the user's true top
interest category on D (the highest weight in ``raw/_truth/interests`` of D, or of the latest day
before D) and latent tier (``raw/_truth/users``).

Per query, the rate is the share of its k neighbours with the query's own label; the table gives
mean ± std over the queries and the 95% bootstrap interval of the mean (resampling queries). The
chance rate is the probability that a random other user of the same population shares a random
user's label, Σ n_c (n_c − 1) / (N (N − 1)) (Σ share² without pairing a user with itself); lift is
rate / chance. Also the mean cosine of the 1st and the k-th neighbour and of random pairs of users.

Rows: the published vectors; the same vectors centred on the population mean (a diagnostic: a
component every vector shares dominates cosine similarity and hides how users differ); each block
of the published layout alone; the blocks L2-normalised and concatenated (equal weight: the cosine
is the mean of the blocks' cosines; a diagnostic of what a balanced similarity would give); and a
baseline that needs no training, the bag of categories of each user's serving sequence
(``features/user_sequences`` of D), for context.

The blocks are not hard-coded: they come from the registered model version that published D (its
``model_name`` / ``model_version`` columns, loaded through :class:`registry.models.ModelRegistry`),
whose user tower says where each part of its representation lies
(:func:`training.layout.published_layout`, also what the nightly job records in its commit: the
dense part, the attention heads' interests of :meth:`training.model.UserTower.interests`, and the
rest of :meth:`training.model.UserTower.price_features`). Each block's share of the squared norm
(Σ over users of ‖x_block‖² / Σ ‖x‖²) says how much of the whole-vector cosine it can drive. A model
whose representation has no such layout (the baselines' towers), a partition written by several
versions or an unreachable registry leaves the block rows out, with a note.

Writes ``<name>.md`` and ``<name>.json`` (``--out-dir``, default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from benchmarks.common import ROOT, bench_main
from core import tables as t
from core.errors import PlatformError
from training.layout import Block, column_runs, published_layout

if TYPE_CHECKING:
    import pyarrow as pa

    from core.delta import DeltaTables

logger = logging.getLogger("bench_neighbours")

SPEC = t.USER_REPRESENTATIONS
BATCH_ROWS = 65_536
CHUNK_BYTES = 64 * 2**20  # the (queries, chunk) similarity block of one matrix product
LOG_EVERY_S = 5.0
RANDOM_PAIRS = 20_000
LABELS = {"category": "same true top category", "tier": "same true tier"}


# ---------------------------------------------------------------------- the numpy part
@dataclass(frozen=True)
class Vectors:
    """One representation of the population.

    Attributes:
        matrix: (N, D) float32, one row per user.
        centre: (D,) subtracted from every row before the cosine, or None.
    """

    key: str
    label: str
    matrix: np.ndarray
    centre: np.ndarray | None = None
    blocks: tuple[np.ndarray, ...] = ()
    """Column indices of blocks of ``matrix``: when given, each row is the blocks only, each one
    L2-normalised on its own and weighted equally (:func:`block_unit`); one block = that block alone."""

    @property
    def dim(self) -> int:
        return sum(len(b) for b in self.blocks) if self.blocks else int(self.matrix.shape[1])

    def unit(self, rows: slice | np.ndarray) -> np.ndarray:
        """(R, D) unit-length rows (after centring); an all-zero row stays zero."""
        x = self.matrix[rows]
        if self.centre is not None:
            x = x - self.centre
        if self.blocks:
            return block_unit(x, self.blocks)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def block_unit(x: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """(R, Σ|b|): each block (column indices) of each row of ``x`` (R, D) L2-normalised, concatenated
    and divided by sqrt(#blocks), so every block weighs the same and the cosine of two such rows is the
    mean of their blocks' cosines. A row whose blocks are all non-zero has unit length; an all-zero
    block stays zero."""
    parts = [x[:, b] for b in blocks]
    scale = np.float32(1.0 / np.sqrt(len(parts)))
    return np.concatenate([p * (scale / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12))
                           for p in parts], axis=1)


def squared_norm_shares(matrix: np.ndarray, blocks: Sequence[np.ndarray], chunk_rows: int = 65_536) -> np.ndarray:
    """(B,) each block's share of the population's squared norm: Σ_users ‖x_b‖² / Σ_users ‖x‖²
    (float64, over chunks of rows)."""
    per_block = np.zeros(len(blocks))
    total = 0.0
    for start in range(0, len(matrix), chunk_rows):
        sq = np.square(matrix[start:start + chunk_rows], dtype=np.float64)
        total += float(sq.sum())
        per_block += [float(sq[:, b].sum()) for b in blocks]
    return per_block / total if total > 0 else np.full(len(blocks), np.nan)


def nearest(vectors: Vectors, queries: np.ndarray, k: int, chunk_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each query row by cosine similarity (exact).

    Args:
        queries: (Q,) row indices of the queries.
        chunk_rows: population rows per matrix product (0: as many as fit in ``CHUNK_BYTES``).

    Returns:
        (Q, k) row indices and (Q, k) cosines, nearest first. A row is never its own neighbour.
    """
    n, nq = len(vectors.matrix), len(queries)
    if not 0 < k < n:
        raise PlatformError(f"--k {k} needs 0 < k < {n:,} (the number of users)")
    chunk = chunk_rows or max(1024, CHUNK_BYTES // (4 * max(nq, 1)))
    q = vectors.unit(queries)
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    started = last_log = time.time()
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = q @ vectors.unit(slice(start, stop)).T  # (Q, C)
        own = np.flatnonzero((queries >= start) & (queries < stop))
        sims[own, queries[own] - start] = -np.inf
        if sims.shape[1] > k:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            sims = np.take_along_axis(sims, part, axis=1)
            idx = part + start
        else:
            idx = np.broadcast_to(np.arange(start, stop), sims.shape)
        cand_s = np.concatenate([best_s, sims], axis=1)
        cand_i = np.concatenate([best_i, idx], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
        now = time.time()
        if now - last_log >= LOG_EVERY_S and stop < n:
            elapsed = now - started
            logger.info("%s: %s of %s users searched, %.0f s elapsed, ETA %.0f s", vectors.key, f"{stop:,}",
                        f"{n:,}", elapsed, elapsed * (n - stop) / stop)
            last_log = now
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)


def share_rates(labels: np.ndarray, queries: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(Q,) the share of each query's neighbours (``neighbours``: (Q, k) row indices) whose label
    equals the query's own."""
    return np.asarray((labels[neighbours] == labels[queries][:, None]).mean(axis=1), dtype=np.float64)


def chance_rate(labels: np.ndarray) -> float:
    """Probability that a random other member of the population has a random member's label:
    Σ n_c (n_c − 1) / (N (N − 1))."""
    _, counts = np.unique(labels, return_counts=True)
    n = int(counts.sum())
    if n < 2:
        return float("nan")
    return float((counts.astype(np.float64) * (counts - 1)).sum() / (n * (n - 1.0)))


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, resamples: int = 2000,
                       level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the mean of ``values`` over bootstrap resamples."""
    n = len(values)
    means = np.empty(resamples)
    block = max(1, 4_000_000 // max(n, 1))
    for s in range(0, resamples, block):
        e = min(resamples, s + block)
        means[s:e] = values[rng.integers(0, n, (e - s, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def random_pair_cosines(vectors: Vectors, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Cosines of ``pairs`` random pairs of distinct rows."""
    n = len(vectors.matrix)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n
    return np.asarray((vectors.unit(i) * vectors.unit(j)).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class Rate:
    """Per-query rates of one label: mean, std, the bootstrap interval of the mean, and chance."""

    mean: float
    std: float
    low: float
    high: float
    chance: float

    @property
    def lift(self) -> float:
        return self.mean / self.chance if self.chance > 0 else float("nan")

    def cell(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, Any]:
        c = self.chance if self.chance > 0 else float("nan")
        return {"mean": self.mean, "std": self.std, "ci95": [self.low, self.high], "chance": self.chance,
                "lift": self.lift, "lift_ci95": [self.low / c, self.high / c]}


def rate(values: np.ndarray, chance: float, rng: np.random.Generator) -> Rate:
    low, high = bootstrap_interval(values, rng)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return Rate(float(values.mean()), std, low, high, chance)


@dataclass(frozen=True)
class Score:
    """The neighbour statistics of one representation."""

    key: str
    label: str
    dim: int
    rates: dict[str, Rate]
    cosines: dict[str, tuple[float, float]]  # first / kth / random: (mean, std)
    seconds: float
    share: float | None = None  # of the published vectors' squared norm (whole vector: 1; None: not a part)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "dim": self.dim, "share_of_squared_norm": self.share,
                "rates": {k: r.as_dict() for k, r in self.rates.items()},
                "cosines": {k: {"mean": m, "std": s} for k, (m, s) in self.cosines.items()},
                "search_seconds": self.seconds}


def score(vectors: Vectors, labels: Mapping[str, np.ndarray], queries: np.ndarray, k: int, seed: int,
          chunk_rows: int = 0) -> Score:
    """Neighbour rates of every label (each (N,) over the rows of ``vectors``) and cosines."""
    started = time.time()
    neighbours, sims = nearest(vectors, queries, k, chunk_rows)
    seconds = time.time() - started
    rng = np.random.default_rng(seed)
    rates = {name: rate(share_rates(lab, queries, neighbours), chance_rate(lab), rng) for name, lab in labels.items()}
    pairs = random_pair_cosines(vectors, RANDOM_PAIRS, rng)

    def ms(x: np.ndarray) -> tuple[float, float]:
        return float(np.mean(x)), float(np.std(x))

    cosines = {"first": ms(sims[:, 0]), "kth": ms(sims[:, -1]), "random": ms(pairs)}
    return Score(vectors.key, vectors.label, vectors.dim, rates, cosines, seconds)


def align(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, missing: int = -1) -> np.ndarray:
    """``values`` of ``keys`` in the order of ``ids``; ``missing`` where an id is not a key."""
    out = np.full(len(ids), missing, dtype=values.dtype if len(values) else np.int64)
    if not len(keys):
        return out
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, ids), 0, len(keys) - 1)
    found = sorted_keys[pos] == ids
    out[found] = values[order][pos[found]]
    return out


def top_labels(categories: "pa.Array", weights: "pa.Array") -> np.ndarray:
    """(R,) the category of the highest weight in each row of two parallel list columns; -1 for an
    empty row."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(categories).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    cats = categories.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    w = weights.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if len(cats) != len(w):
        raise PlatformError("top_categories and top_weights differ in length in the truth table")
    rows = len(lengths)
    out = np.full(rows, -1, np.int64)
    if not len(cats):
        return out
    row = np.repeat(np.arange(rows), lengths)
    col = np.arange(len(cats)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    grid_w = np.full((rows, int(lengths.max())), -np.inf)
    grid_c = np.full((rows, int(lengths.max())), -1, np.int64)
    grid_w[row, col], grid_c[row, col] = w, cats
    has = lengths > 0
    out[has] = grid_c[has, grid_w[has].argmax(axis=1)]
    return out


# ---------------------------------------------------------------------- reading the lake
def _batches(files: Sequence[str], columns: Sequence[str]) -> Iterator["pa.RecordBatch"]:
    """The Parquet files (URLs or paths), ``columns`` only, in batches of at most ``BATCH_ROWS``."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    for f in files:
        filesystem, path = fs.FileSystem.from_uri(f) if "://" in f else (fs.LocalFileSystem(), f)
        with filesystem.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=list(columns))


def read_vectors(files: Sequence[str], max_mb: float) -> tuple[np.ndarray, np.ndarray]:
    """(N,) user ids and the (N, D) float32 matrix of the published embeddings.

    Raises:
        PlatformError: the matrix would exceed ``max_mb``, or the vectors differ in length.
    """
    import pyarrow.compute as pc

    from training.data import count_rows

    n = count_rows(files)
    ids = np.empty(n, np.int64)
    matrix: np.ndarray | None = None
    row = 0
    for batch in _batches(files, ["user_id", "embedding"]):
        m = batch.num_rows
        if not m:
            continue
        emb = batch.column(1)
        lengths = pc.list_value_length(emb).fill_null(-1).to_numpy(zero_copy_only=False)
        if matrix is None:
            dim = int(lengths[0])
            need = n * dim * 4 / 2**20
            if need > max_mb:
                raise PlatformError(f"{n:,} users x {dim} floats need {need:,.0f} MB, above --max-matrix-mb "
                                    f"{max_mb:,.0f}; raise it if the machine has the memory")
            matrix = np.empty((n, dim), np.float32)
        if (lengths != matrix.shape[1]).any():
            raise PlatformError(f"{SPEC.name}: embeddings of different lengths (or null) in one partition")
        matrix[row:row + m] = emb.flatten().to_numpy(zero_copy_only=False).reshape(m, matrix.shape[1])
        ids[row:row + m] = batch.column(0).to_numpy(zero_copy_only=False)
        row += m
    if matrix is None or row != n:
        raise PlatformError(f"{SPEC.name}: read {row:,} of {n:,} rows")
    return ids, matrix


def publishing_models(files: Sequence[str]) -> list[tuple[str, str]]:
    """The distinct (``model_name``, ``model_version``) of the partition's rows."""
    import pyarrow as pa

    seen: set[tuple[str, str]] = set()
    for batch in _batches(files, ["model_name", "model_version"]):
        pairs = pa.Table.from_batches([batch]).group_by(["model_name", "model_version"]).aggregate([])
        names, versions = pairs.column("model_name").to_pylist(), pairs.column("model_version").to_pylist()
        seen.update((str(n), str(v)) for n, v in zip(names, versions))
    return sorted(seen)


# ---------------------------------------------------------------------- the published layout
def registered_layout(cfg: Any, name: str, version: str) -> tuple[list[Block], str]:
    """:func:`training.layout.published_layout` of version ``version`` of registered model ``name`` (``cfg.mlflow``'s
    tracking server) and a description of its spec.

    Raises:
        PlatformError: no such version, or an unreadable artifact.
    """
    from registry.models import ModelRegistry

    loaded = ModelRegistry(cfg.mlflow.model_copy(update={"registered_model": name})).load(version)
    m = loaded.spec.model
    spec = (f"{name} v{loaded.version} ({m.family}; spec: representation_dim {m.representation_dim}, "
            f"attention_heads {m.attention_heads}, category_dim {m.category_dim}, tag_dim {m.tag_dim}; "
            f"embedding_dim {loaded.model.embedding_dim})")
    return published_layout(loaded.model), spec


@dataclass(frozen=True)
class Truth:
    """The demo world's labels: ``ids`` (U,), ``tier`` (U,), ``category`` (U,) (-1: unknown)."""

    ids: np.ndarray
    tier: np.ndarray
    category: np.ndarray
    interest_day: str


def read_truth(tables: "DeltaTables", day: str) -> Truth:
    """Every demo user's latent tier and top interest category on ``day`` (or the latest day before)."""
    if not (tables.exists(t.TRUTH_USERS) and tables.exists(t.TRUTH_INTERESTS)):
        raise PlatformError(f"no ground truth under {tables.root}/raw/_truth: this benchmark scores against the "
                            f"demo world (jobs/generate_demo_world.py)")
    days = [d for d in tables.partitions(t.TRUTH_INTERESTS) if d <= day]
    if not days:
        raise PlatformError(f"{t.TRUTH_INTERESTS.name} has no day on or before {day}")
    uid, tier = [], []
    for batch in _batches(tables.files(t.TRUTH_USERS), ["user_id", "tier"]):
        uid.append(batch.column(0).to_numpy(zero_copy_only=False))
        tier.append(batch.column(1).to_numpy(zero_copy_only=False))
    iid, cat = [], []
    for batch in _batches(tables.files(t.TRUTH_INTERESTS, dt=days[-1]), ["user_id", "top_categories", "top_weights"]):
        iid.append(batch.column(0).to_numpy(zero_copy_only=False))
        cat.append(top_labels(batch.column(1), batch.column(2)))
    ids = np.concatenate(uid).astype(np.int64)
    category = align(ids, np.concatenate(iid).astype(np.int64), np.concatenate(cat))
    return Truth(ids, np.concatenate(tier).astype(np.int64), category, days[-1])


def category_bags(files: Sequence[str], ids: np.ndarray, max_mb: float) -> np.ndarray | None:
    """(N, C) float32 counts of each category among the behaviours of each user's serving sequence
    (C: the categories seen; rows in ``ids`` order, zero for a user without a sequence), or None when
    the matrix would exceed ``max_mb``."""
    import pyarrow.compute as pc

    from features.encoding import UNKNOWN

    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for batch in _batches(files, ["user_id", "seq_len", "seq_category"]):
        if not batch.num_rows:
            continue
        rows = align(batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64), ids, np.arange(len(ids)))
        seq = batch.column(2)
        lengths = pc.list_value_length(seq).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = seq.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        pos = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seq_len = np.repeat(batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64), lengths)
        owner = np.repeat(rows, lengths)
        keep = (pos < seq_len) & (codes > UNKNOWN) & (owner >= 0)
        key, cnt = np.unique((owner[keep] << 32) | codes[keep], return_counts=True)
        keys.append(key)
        counts.append(cnt)
    if not keys:
        return None
    key, cnt = np.concatenate(keys), np.concatenate(counts)
    used, col = np.unique(key & 0xFFFFFFFF, return_inverse=True)
    need = len(ids) * len(used) * 4 / 2**20
    if need > max_mb:
        logger.warning("bag-of-categories baseline skipped: %s users x %d categories need %.0f MB", f"{len(ids):,}",
                       len(used), need)
        return None
    bags = np.zeros((len(ids), len(used)), np.float32)
    np.add.at(bags, (key >> 32, col), cnt.astype(np.float32))
    return bags


# ---------------------------------------------------------------------- report
def markdown(scores: Sequence[Score], context: Mapping[str, Any]) -> str:
    k = context["k"]
    lines = [
        "# Nearest neighbours of the published user vectors against the demo world's truth", "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}; date {context['date']}; wall time {context['wall_seconds']:.0f} s.  ",
        f"Data: {context['data']}  ",
        f"Truth (for scoring only): {context['truth']}  ",
        f"Protocol: {context['queries']:,} query users drawn with seed {context['seed']}; for each, its k = {k} "
        f"nearest other users of the {context['users']:,} by cosine similarity (exact). A query's rate is the share "
        "of its neighbours with its own true label. Cells: mean ± std over the queries [95% bootstrap interval of "
        "the mean]. Chance: the probability that a random other user of the same population shares the label, "
        "Σ n(n−1) / (N(N−1)); lift = mean rate / chance.", "",
        f"Layout: {context['layout']}", "",
        f"| vectors | dim | share of ‖x‖² | {LABELS['category']} | chance | lift | {LABELS['tier']} | chance | lift | "
        f"cos 1st neighbour | cos {k}th neighbour | cos random pair |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for s in scores:
        cells = ["—" if s.share is None else f"{s.share:.3f}"]
        for name in LABELS:
            r = s.rates[name]
            cells += [r.cell(), f"{r.chance:.3f}", f"{r.lift:.2f}"]
        cos = [f"{s.cosines[c][0]:.4f} ± {s.cosines[c][1]:.4f}" for c in ("first", "kth", "random")]
        lines.append(f"| {s.label} | {s.dim} | " + " | ".join(cells + cos) + " |")
    lines += ["", *[f"* {note}" for note in context["notes"]]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, command: str) -> str:
    from core.config import load_config
    from core.delta import get_tables
    from core.spark import get_spark
    from features import representations as reps

    started = time.time()
    cfg = load_config(args.config, args.overrides)
    tables = get_tables(get_spark(cfg), cfg)
    snap = reps.snapshot(tables, args.date.isoformat() if args.date else None)
    files = tables.files(SPEC, dt=snap.day, version=snap.version)
    truth = read_truth(tables, snap.day)
    ids, matrix = read_vectors(files, args.max_matrix_mb)
    logger.info("read %s users x %d floats of %s dt=%s v%d", f"{len(ids):,}", matrix.shape[1], SPEC.name,
                snap.day, snap.version)
    labels = {"category": align(ids, truth.ids, truth.category), "tier": align(ids, truth.ids, truth.tier)}
    known = (labels["category"] >= 0) & (labels["tier"] >= 0)
    if not known.all():
        logger.warning("%d published users have no truth label; they are left out", int((~known).sum()))
        ids, matrix, labels = ids[known], matrix[known], {k: v[known] for k, v in labels.items()}
    n = len(ids)
    if n <= args.k:
        raise PlatformError(f"{n:,} users with truth labels: too few for --k {args.k}")
    queries = np.sort(np.random.default_rng(args.seed).choice(n, size=min(args.queries, n), replace=False))
    rows = [Vectors("published", "published vectors", matrix),
            Vectors("published_centred", "published vectors, centred on the population mean (diagnostic)", matrix,
                    matrix.mean(axis=0, dtype=np.float64).astype(np.float32))]
    notes = ["*centred*: the population's mean vector subtracted before the cosine; a large gap to the first row "
             "means most of each published vector is a component all users share."]
    shares: dict[str, float] = {"published": 1.0}
    layout, blocks = "not computed", list[Block]()
    models = publishing_models(files)
    if len(models) != 1:
        layout = f"not computed: the partition was written by {len(models)} model versions ({models})"
    else:
        from mlflow.exceptions import MlflowException

        try:
            blocks, spec = registered_layout(cfg, *models[0])
        except (PlatformError, MlflowException) as exc:
            layout = f"not computed: cannot load {models[0][0]} v{models[0][1]} from the registry ({exc})"
        else:
            if not blocks:
                layout = f"none: {spec} publishes an opaque vector (no interests)"
            elif sum(len(b.columns) for b in blocks) != matrix.shape[1]:
                layout = f"not used: {spec} does not match the {matrix.shape[1]} published floats"
                blocks = []
            else:
                layout = f"from the registered model that published the vectors, {spec}: " + "; ".join(
                    f"{b.key} = {b.label}" for b in blocks) + "."
    if len(blocks) > 1:
        for b, share in zip(blocks, squared_norm_shares(matrix, [b.columns for b in blocks])):
            rows.append(Vectors(f"block_{b.key}", f"block alone: {b.label}", matrix, blocks=(b.columns,)))
            shares[f"block_{b.key}"] = float(share)
        rows.append(Vectors("blocks_balanced", f"the {len(blocks)} blocks, each L2-normalised, concatenated "
                            "(equal weight; diagnostic)", matrix, blocks=tuple(b.columns for b in blocks)))
        notes.append("*share of ‖x‖²*: the block's part of the population's squared norm, Σ‖x_block‖² / Σ‖x‖²; "
                     "the whole-vector cosine weighs each block by roughly this share. *block alone*: the cosine "
                     "of that block's columns only. *equal weight*: each block scaled to unit length and the "
                     "blocks concatenated, so the cosine is the mean of the blocks' cosines (a diagnostic of a "
                     "balanced similarity, not a trained one).")
    bags = None
    if tables.exists(t.USER_SEQUENCES) and snap.day in tables.partitions(t.USER_SEQUENCES):
        bags = category_bags(tables.files(t.USER_SEQUENCES, dt=snap.day), ids, args.max_matrix_mb)
    if bags is not None:
        rows.append(Vectors("bag_of_categories", "baseline: bag of categories of the serving sequence "
                            "(no training)", bags))
        notes.append(f"*baseline*: counts of each category among the user's last {cfg.sequences.max_len} "
                     f"behaviours in {t.USER_SEQUENCES.name} dt={snap.day}; it carries no price information.")
    else:
        notes.append(f"baseline not computed: no usable {t.USER_SEQUENCES.name} dt={snap.day}.")
    scores = []
    for vec in rows:
        s = replace(score(vec, labels, queries, args.k, args.seed), share=shares.get(vec.key))
        logger.info("%s: category %.3f (chance %.3f), tier %.3f (chance %.3f), search %.1f s", vec.key,
                    s.rates["category"].mean, s.rates["category"].chance, s.rates["tier"].mean,
                    s.rates["tier"].chance, s.seconds)
        scores.append(s)

    from benchmarks.common import machine

    cat_counts = np.unique(labels["category"], return_counts=True)[1]
    model = ", ".join(f"{name} v{version}" for name, version in models) or "?"
    context = {
        "command": command, "date": dt.date.today().isoformat(), "machine": machine(),
        "wall_seconds": time.time() - started, "k": args.k, "queries": len(queries), "seed": args.seed,
        "users": n, "lake_root": tables.root, "table_version": snap.version, "dt": snap.day,
        "model": model, "interest_day": truth.interest_day, "layout": layout,
        "blocks": [{"key": b.key, "label": b.label, "columns": column_runs(b.columns), "dim": len(b.columns),
                    "share_of_squared_norm": shares[f"block_{b.key}"]} for b in blocks if len(blocks) > 1],
        "data": f"{SPEC.name} v{snap.version} dt={snap.day} ({model}): {n:,} users x {matrix.shape[1]} "
                f"floats, lake {tables.root}.",
        "truth": f"tier from {t.TRUTH_USERS.name}; top interest category from {t.TRUTH_INTERESTS.name} "
                 f"dt={truth.interest_day} (the highest weight); {len(cat_counts)} distinct top categories among "
                 f"these users (largest share {cat_counts.max() / n:.1%}).",
        "notes": notes,
    }
    text = markdown(scores, context)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(
        json.dumps({"context": context, "rows": [s.as_dict() for s in scores]}, indent=1, default=float))
    (args.out_dir / f"{args.name}.md").write_text(
        f"<!-- generated by: {command} ({context['date']}, {context['machine']}); do not edit -->\n" + text)
    return text


def parser() -> argparse.ArgumentParser:
    from core.cli import parse_date

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml", help="config file (default conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (e.g. lake_root=/path/to/lake)")
    p.add_argument("--date", type=parse_date, help="published date (default: the latest partition)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--queries", type=int, default=2000, help="query users (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample and the bootstrap")
    p.add_argument("--max-matrix-mb", type=float, default=2048.0,
                   help="refuse when the vectors' float32 matrix would exceed this (default 2048)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="neighbours", help="results file names (<name>.md, <name>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.queries < 1 or args.k < 1:
        raise SystemExit("bench_neighbours: --queries and --k must be at least 1")
    bench_main("bench_neighbours", args, run, argv)


if __name__ == "__main__":
    main()
