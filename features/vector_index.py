"""Approximate nearest-neighbour index of one published partition of ``outputs/user_representations``.

``query similar`` must answer in well under a second at a million users, where the exact scan reads
every vector (``features.representations.similar``, on Spark). The nightly job therefore builds,
right after it commits a date, an inverted-file index (faiss ``IndexIVFFlat``, inner product) of that
date's vectors beside the table, at the path it recorded in the commit's metadata
(``index.path``, relative to the table: ``_index/dt=<date>/<run_id>``).

The index lives in the *search space* of the partition's similarity measure, where the measure is an
inner product (:func:`search_space`):

* ``balanced`` (a recorded layout of B blocks): every block of a vector scaled to unit length and the
  whole divided by sqrt(B), so the inner product of two rows is the mean of their blocks' cosines,
  exactly the score of the exact scan;
* ``cosine`` (no layout): the whole vector scaled to unit length.

The inverted file stores the full vectors (no quantisation), so every score it returns is the exact
score of that pair; only the candidate set is approximate: a query scans the ``nprobe`` lists whose
centroids are nearest to it. Recall@10 against the exact scan and the latency at one million users
are measured by ``benchmarks/bench_similar.py`` (``benchmarks/results/similar.md``), which also
records why this index kind was chosen over HNSW (hnswlib, faiss) and 8-bit quantised lists.

Building reads the committed Parquet files twice with Arrow in record batches (a sample of rows to
train the coarse centroids, then every row). The second pass adds the rows to shards of at most
``shard_rows`` rows, each written to disk as soon as it is full, and the shards' lists are then merged
into one lists file (faiss ``OnDiskInvertedLists``) that queries memory-map. So the builder holds the
training sample and one shard, never the whole index: its memory does not grow with the users (the
index itself is rows x dim float32 on disk, 5 GB at one million 1,250-float vectors; the pages a query
touches are page cache). The lists file is named relative to the index folder and re-attached when the
index is opened, so the folder can be renamed or the lake moved.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from core.errors import PlatformError

logger = logging.getLogger(__name__)

INDEX_ROOT = "_index"
INDEX_FILE = "index.faiss"
LISTS_FILE = "lists.ivfdata"
MANIFEST = "manifest.json"
KIND = "faiss_ivf_flat"
Spans = Sequence[Sequence[tuple[int, int]]]  # per block: its column runs (first, last), inclusive


def _faiss() -> Any:
    """The faiss module, its loader's per-CPU-variant attempts kept out of the job's output."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def relative_path(day: str, run_id: str) -> str:
    """Where a run's index of ``day`` lives, relative to the table's folder."""
    return f"{INDEX_ROOT}/dt={day}/{run_id}"


def search_space(emb: np.ndarray, blocks: Spans | None) -> np.ndarray:
    """Rows of ``emb`` (N, D) mapped to the space where the similarity measure is the inner product.

    Args:
        emb: (N, D) vectors (any float dtype; a float32 copy is returned).
        blocks: per block, its column runs; None for the whole-vector cosine.

    Returns:
        (N, D) float32: each block's part scaled to unit length and the row divided by sqrt(B)
        (``balanced``), or the row scaled to unit length (``cosine``). Zero parts stay zero.
    """
    x = np.array(emb, dtype=np.float32, copy=True, ndmin=2)
    if blocks is None:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x
    cols = [np.concatenate([np.arange(a, z + 1) for a, z in spans]) for spans in blocks]
    for c in cols:
        part = x[:, c]
        x[:, c] = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    x /= math.sqrt(len(cols))
    return x


def default_nlist(rows: int) -> int:
    """Coarse lists: about sqrt(rows) (1,000 at a million users: training and adding cost rows x lists
    inner products, a query scans nprobe lists of about sqrt(rows) rows each), and at least 39 training
    rows per list (faiss' minimum for a stable k-means), so a small table gets one list (an exact scan)."""
    return max(1, min(int(round(math.sqrt(rows))), rows // 39))


def _rows(paths: Sequence[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def batches(paths: Sequence[str], batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(user ids (n,), vectors (n, D)) of the files, in record batches of at most ``batch_rows``, one file
    and one row group after another (a dataset scanner reads ahead across files and holds several of them)."""
    import pyarrow.parquet as pq

    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["user_id", "embedding"]):
            if not batch.num_rows:
                continue
            flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            yield (batch.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64),
                   flat.reshape(batch.num_rows, len(flat) // batch.num_rows))


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` wrote: the folder and its manifest."""

    path: str
    manifest: dict[str, Any]


def build(paths: Sequence[str], out_dir: str, blocks: Spans | None, *, nlist: int | None = None,
          nprobe: int = 32, train_rows: int = 65_536, batch_rows: int = 16_384, shard_rows: int = 65_536,
          threads: int | None = None, seed: int = 0, about: dict[str, Any] | None = None) -> BuildResult:
    """Build the index of the vectors in the Parquet ``paths`` into ``out_dir`` (atomically: a
    temporary folder renamed at the end, so a reader sees a whole index or none).

    Args:
        paths: local Parquet files with ``user_id`` (long) and ``embedding`` (list of floats).
        blocks: the measure's blocks (:func:`search_space`); None for the whole-vector cosine.
        nlist: coarse lists (default :func:`default_nlist`); nprobe: lists a query scans by default.
        train_rows: rows sampled (seeded) to train the coarse centroids.
        shard_rows: rows the builder holds at most while adding (a shard; the shards go to disk and are merged).
        about: extra manifest fields (date, table version of the commit, model).

    Raises:
        PlatformError: no rows, vectors of different lengths, or a non-finite value.
    """
    faiss = _faiss()
    started = time.monotonic()
    n = _rows(paths)
    if n == 0:
        raise PlatformError(f"no rows to index in {len(paths)} file(s): nothing was published for this date")
    lists = min(nlist or default_nlist(n), n)
    if threads:
        faiss.omp_set_num_threads(threads)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max(train_rows, lists)), replace=False))
    dim, chunks, offset = 0, [], 0
    for _, vec in batches(paths, batch_rows):  # pass 1: the training sample
        dim = dim or vec.shape[1]
        _check(vec, dim, offset)
        take = sample[(sample >= offset) & (sample < offset + len(vec))] - offset
        if len(take):
            chunks.append(search_space(vec[take], blocks))
        offset += len(vec)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(np.concatenate(chunks)))
    del chunks
    trained = time.monotonic()
    logger.info("vector index: trained %d lists on %d of %d rows in %.1f s", lists, len(sample), n, trained - started)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shards: list[tuple[str, Any]] = []  # (lists file, its memory-mapped lists) of each shard written
    shard: Any = None
    done, last = 0, trained
    for ids, vec in batches(paths, batch_rows):  # pass 2: every row, one shard in memory at a time
        if shard is None:
            shard = faiss.clone_index(index)
        shard.add_with_ids(search_space(vec, blocks), ids)
        done += len(ids)
        if shard.ntotal >= shard_rows:
            shards.append(_write_shard(faiss, shard, tmp, len(shards)))
            shard = None
        now = time.monotonic()
        if now - last >= 5 or done == n:
            rate = done / max(now - trained, 1e-9)
            logger.info("vector index: added %d/%d rows (%.0f rows/s, ETA %.0f s)", done, n, rate, (n - done) / rate)
            last = now
    if shard is not None:
        shards.append(_write_shard(faiss, shard, tmp, len(shards)))
    _merge_on_disk(faiss, index, shards, os.path.join(tmp, LISTS_FILE))
    for path, _ in shards:
        os.remove(path)
    manifest = {"kind": KIND, "library": f"faiss-cpu {faiss.__version__}", "metric": "inner_product",
                "measure": "cosine" if blocks is None else "balanced",
                "blocks": None if blocks is None else [[list(r) for r in spans] for spans in blocks],
                "rows": int(n), "dim": int(dim), "nlist": int(lists), "nprobe": int(min(nprobe, lists)),
                "train_rows": int(len(sample)), "lists_file": LISTS_FILE, "shards": len(shards),
                "build_s": round(time.monotonic() - started, 2), **(about or {})}
    faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
    with open(os.path.join(tmp, MANIFEST), "w") as fh:  # written last: its presence marks a whole index
        json.dump(manifest, fh, indent=1)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return BuildResult(out_dir, manifest)


def _lists_file(faiss: Any, ivf: Any, sources: Sequence[Any], path: str) -> tuple[Any, int]:
    """A lists file at ``path`` holding the ``sources``' lists (inverted lists of ``ivf``'s shape), list by list;
    returns its memory-mapped lists and their number of entries."""
    parts = faiss.InvertedListsPtrVector()
    for source in sources:
        parts.push_back(source)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, path)
    with _stdout_to_devnull():
        total = lists.merge_from_multiple(parts.data(), parts.size(), False)
    return lists, int(total)


def _write_shard(faiss: Any, shard: Any, folder: str, i: int) -> tuple[str, Any]:
    """Move a full shard's lists out of memory into a lists file of their own (memory-mapped from then on)."""
    path = os.path.join(folder, f"shard-{i:05d}.ivfdata")
    ivf = faiss.extract_index_ivf(shard)
    return path, _lists_file(faiss, ivf, [ivf.invlists], path)[0]


@contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """faiss' on-disk lists print a line to the C stdout each time they grow their file; a job's stdout
    carries its summary, so file descriptor 1 points at /dev/null meanwhile."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


def _merge_on_disk(faiss: Any, index: Any, shards: list[tuple[str, Any]], lists_path: str) -> None:
    """Give the trained, empty ``index`` one lists file holding every shard's lists, read from their
    memory-mapped files list by list."""
    ivf = faiss.extract_index_ivf(index)
    lists, index.ntotal = _lists_file(faiss, ivf, [shard_lists for _, shard_lists in shards], lists_path)
    ivf.ntotal = index.ntotal
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns the lists now


def prune_siblings(out_dir: str) -> list[str]:
    """Remove the other runs' indexes of the same date (``out_dir``'s siblings: earlier publishes of the
    date, or a build a killed run left half-written); returns their names. One run per date holds the
    write lease, so no sibling is being built. A time-travel query of an earlier version of the date
    then finds no index and runs the exact scan."""
    parent, mine = os.path.split(os.path.normpath(out_dir))
    gone = sorted(name for name in os.listdir(parent) if name != mine)
    for name in gone:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return gone


def _check(vec: np.ndarray, dim: int, offset: int) -> None:
    if vec.shape[1] != dim:
        raise PlatformError(f"embedding near row {offset} has {vec.shape[1]} floats, earlier rows {dim}: the "
                            f"partition mixes models; re-publish the date")
    if not np.isfinite(vec).all():
        raise PlatformError(f"embedding near row {offset} holds a non-finite value: re-publish the date")


class Index:
    """A built index, opened for search (:func:`open_index`)."""

    def __init__(self, path: str, manifest: dict[str, Any], index: Any) -> None:
        self.path, self.manifest, self._index = path, manifest, index

    @property
    def blocks(self) -> Spans | None:
        raw = self.manifest.get("blocks")
        return None if raw is None else [[(int(a), int(z)) for a, z in spans] for spans in raw]

    def search(self, vector: Sequence[float], k: int, exclude: int | None = None,
               nprobe: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest rows to ``vector`` (a raw published vector) as (user_id, score), best
        first, ``exclude`` (the query user) left out; ties in score break by the smaller user id, as
        in the exact scan."""
        self._index.nprobe = int(min(nprobe or self.manifest["nprobe"], self.manifest["nlist"]))
        q = search_space(np.asarray(vector, dtype=np.float32)[None, :], self.blocks)
        scores, ids = self._index.search(q, k + 1)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != exclude]
        return sorted(found, key=lambda r: (-r[1], r[0]))[:k]


def open_index(path: str, mmap: bool = True) -> Index:
    """Open the index in ``path``. Its lists file is memory-mapped (a query touches only the ``nprobe``
    lists it scans); ``mmap`` only concerns an index built before the lists had their own file, whose
    lists are otherwise read into memory.

    Raises:
        PlatformError: no whole index there (never built, still being built, or removed).
    """
    faiss = _faiss()
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        raise PlatformError(f"no vector index at {path}")
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    if manifest.get("kind") != KIND:
        raise PlatformError(f"vector index at {path} is of kind {manifest.get('kind')!r}, not {KIND!r}: rebuild it")
    index_file = os.path.join(path, INDEX_FILE)
    if manifest.get("lists_file") is None:  # an index of before the lists went to their own file
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return Index(path, manifest, faiss.read_index(index_file, flags))
    index = faiss.read_index(index_file, faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.filename = os.path.join(path, manifest["lists_file"])  # the folder's own, wherever it was built
    if not os.path.exists(lists.filename):
        raise PlatformError(f"vector index at {path} lacks its lists file {manifest['lists_file']}: rebuild it")
    lists.read_only = True
    lists.do_mmap()
    return Index(path, manifest, index)
