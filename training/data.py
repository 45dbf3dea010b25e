"""Petastorm -> PyTorch: batches of example groups as dicts of tensors.

The project's one reader interface: everything that feeds a model reads through
:class:`PetastormSource` (or :class:`TensorBatches`, the same batches from memory).

Each training process reads its own shard of the training table's Parquet files
(``cur_shard = rank``, ``shard_count = world size``; Petastorm shards by row group) through
Petastorm's ``make_batch_reader`` (row groups in a seeded random order). Rows (example groups,
:data:`core.tables.TRAINING_EXAMPLES`) go through a shuffling buffer of ``shuffle_capacity``
rows; each full buffer is permuted with the seed and, with ``bucket_by_length``, sorted by
sequence length and cut into batches whose order is shuffled again, so a batch holds rows of
similar length and the model skips most of the padding (the LSTM runs to the longest sequence
of its batch). The file list comes from a Delta snapshot (:meth:`core.delta.DeltaTables.files`),
so a run reads exactly one table version.

``workers=1`` (``training.deterministic``) gives the same batches on every run: one reader
thread hands row groups over in the seeded order. With more threads, row groups arrive in the
order they finish decoding, which varies run to run.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from core.tables import SLOT_COLUMNS

logger = logging.getLogger(__name__)

Batch = dict[str, Tensor]

USER_FIELDS = ("seq_len", "seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_behavior",
               "seq_scene", "seq_time_bucket", "seq_log_price", "user_age", "user_gender", "user_city", "user_dense")
# the slot columns a model reads (the examples' ids stay in the table)
SLOT_FIELDS = tuple(c for c in SLOT_COLUMNS if c != "example_id")
EXAMPLE_FIELDS = ("kind_id", "n_items", "query_tokens", *SLOT_FIELDS, "l2r", "talent", "talent_category",
                  "talent_prior", "label_follow", "follow_weight", "label_tier", "ppp_user")
# evaluation also needs the keys the metrics group by (users for the bootstrap, lists for NDCG)
EVAL_KEYS = ("user_id", "list_id")
TRAIN_FIELDS = USER_FIELDS + EXAMPLE_FIELDS
EVAL_FIELDS = TRAIN_FIELDS + EVAL_KEYS
# the hybrid model's raw side inputs (features/hybrid_examples; read when its spec has side columns)
SIDE_FIELDS = ("slot_side", "row_side")


def quiet_petastorm() -> None:
    """Silence the deprecation warnings petastorm 0.13.1 raises on every read with pyarrow 14
    (its legacy ``ParquetDataset`` use is the known upstream issue uber/petastorm#806)."""
    for module in ("petastorm", "pyarrow"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    # field lists are exact names here, so the old prefix-matching behaviour it warns about never applied
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)


def to_model_dtypes(batch: Mapping[str, object]) -> Batch:
    """Integer columns -> int64 (embedding indices, labels, ids), floating columns -> float32."""
    out: Batch = {}
    for name, value in batch.items():
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        if tensor.dtype.is_floating_point:
            out[name] = tensor.to(torch.float32)
        elif tensor.dtype != torch.bool:
            out[name] = tensor.to(torch.int64)
        else:
            out[name] = tensor
    return out


def rows_of(batch: Mapping[str, object]) -> int:
    return len(next(iter(batch.values())))  # type: ignore[arg-type]


def _take(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def batch_order(seq_len: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: bool) -> list[np.ndarray]:
    """Row indices of each batch of one buffer: a random permutation cut into batches, or (``bucket``)
    the permutation sorted by sequence length (stable, so equal lengths stay in random order), cut into
    batches, in a random batch order."""
    perm = rng.permutation(len(seq_len))
    if bucket:
        perm = perm[np.argsort(seq_len[perm], kind="stable")]
    batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shuffled_batches(chunks: Iterable[Mapping[str, np.ndarray]], batch_size: int, capacity: int, seed: int,
                     shuffle: bool, bucket: bool) -> Iterator[dict[str, np.ndarray]]:
    """Re-batch a stream of column chunks: in order (``shuffle`` off) or through a shuffling buffer of
    ``capacity`` rows (see :func:`batch_order`)."""
    rng = np.random.default_rng(seed)
    pending: list[dict[str, np.ndarray]] = []
    held = 0

    def flush(parts: list[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        if not parts:
            return
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(next(iter(cols.values())))
        if not shuffle:
            for i in range(0, n, batch_size):
                yield {k: v[i:i + batch_size] for k, v in cols.items()}
            return
        lengths = cols["seq_len"] if "seq_len" in cols else np.zeros(n)
        for idx in batch_order(lengths, batch_size, rng, bucket):
            yield _take(cols, idx)

    for chunk in chunks:
        chunk = {k: np.asarray(v) for k, v in chunk.items()}
        n = len(next(iter(chunk.values())))
        if n == 0:
            continue
        pending.append(chunk)
        held += n
        if held >= (capacity if shuffle else batch_size):
            yield from flush(pending)
            pending, held = [], 0
    yield from flush(pending)


@dataclass(frozen=True)
class PetastormSource:
    """Where and how one process reads its example groups.

    Attributes:
        files: ``file://`` (or object-store) URLs of the Parquet files of one table snapshot.
        fields: columns to read (all numeric, fixed-length arrays).
        batch_size: rows (example groups) per batch.
        shard, shard_count: this process's shard (its rank) and the number of shards.
        shuffle: shuffle row groups and rows (training) or keep the order (evaluation).
        shuffle_capacity: rows in the shuffling buffer.
        bucket_by_length: batch rows of similar sequence length (training).
        workers: Petastorm reader threads (1 = deterministic order).
        seed: shuffling seed (varied per epoch by the caller).
        kinds: keep only rows of these ``kind_id`` values (a single-task model skips the example groups
            of other tasks before they are batched); None keeps every row.
    """

    files: tuple[str, ...]
    fields: tuple[str, ...] = TRAIN_FIELDS
    batch_size: int = 256
    shard: int = 0
    shard_count: int = 1
    shuffle: bool = True
    shuffle_capacity: int = 8192
    bucket_by_length: bool = True
    workers: int = 2
    seed: int = 0
    empty_pass_attempts: int = 5
    kinds: tuple[int, ...] | None = None

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        """One pass over this shard, as model-ready batches.

        petastorm 0.13.1's thread pool has a race: when the consumer first polls while the
        ventilator is handing out the row groups, it can see "every worker done" before and
        "ventilation complete" after the hand-out and end the pass with no row at all (measured
        here: about one pass in five over a two-file input). It can only happen before the first
        row, so a pass that yielded nothing is re-read, up to ``empty_pass_attempts`` times; a
        shard that is really empty (fewer row groups than shards) yields nothing after those, and
        callers check the rows they read.
        """
        if not self.files:
            return
        for attempt in range(self.empty_pass_attempts):
            empty = True
            for batch in self._one_pass(epoch):
                empty = False
                yield batch
            if not empty:
                return
            logger.warning("Petastorm pass %d of epoch %d (shard %d/%d, %d files) yielded no row; re-reading",
                           attempt + 1, epoch, self.shard, self.shard_count, len(self.files))

    def _one_pass(self, epoch: int) -> Iterator[Batch]:
        from petastorm import make_batch_reader

        quiet_petastorm()
        shard_args = {"cur_shard": self.shard, "shard_count": self.shard_count} if self.shard_count > 1 else {}
        reader = make_batch_reader(
            list(self.files), schema_fields=list(self.fields), num_epochs=1, workers_count=self.workers,
            reader_pool_type="thread", shuffle_row_groups=self.shuffle, seed=self.seed + epoch, **shard_args)
        try:
            chunks = (_keep_kinds(row_group._asdict(), self.kinds) for row_group in reader)
            for arrays in shuffled_batches(chunks, self.batch_size, self.shuffle_capacity, self.seed + epoch,
                                           self.shuffle, self.bucket_by_length):
                yield to_model_dtypes(arrays)
        finally:
            reader.stop()
            reader.join()

    def count_rows(self) -> int:
        """Rows this source yields per pass (over all shards): the Parquet footers' counts, or, with
        ``kinds``, the matching rows of the ``kind_id`` column (one integer column is read)."""
        return count_rows(self.files, self.kinds)


def _keep_kinds(arrays: dict[str, np.ndarray], kinds: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    if kinds is None:
        return arrays
    keep = np.isin(np.asarray(arrays["kind_id"]), kinds)
    return arrays if keep.all() else {k: np.asarray(v)[keep] for k, v in arrays.items()}


def count_rows(files: Sequence[str], kinds: tuple[int, ...] | None = None) -> int:
    """Total rows of Parquet files given as URLs or paths (footers only), or the rows whose ``kind_id``
    is one of ``kinds``."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    total = 0
    for f in files:
        filesystem, path = fs.FileSystem.from_uri(f) if "://" in f else (fs.LocalFileSystem(), f)
        with filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            if kinds is None:
                total += parquet.metadata.num_rows
            else:
                total += int(np.isin(parquet.read(columns=["kind_id"]).column(0).to_numpy(), kinds).sum())
    return total


class TensorBatches:
    """The same batches fed from tensors held in memory (tests, benchmarks)."""

    def __init__(self, tensors: Batch, batch_size: int, shuffle: bool = True, seed: int = 0,
                 bucket_by_length: bool = False):
        sizes = {len(v) for v in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {sorted(sizes)}")
        self.tensors = tensors
        self.n = sizes.pop()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_by_length = bucket_by_length

    @staticmethod
    def collect(source: PetastormSource) -> "TensorBatches":
        """Read a whole source into memory (tests and benchmarks only: bounded by their caller)."""
        parts: dict[str, list[Tensor]] = {}
        for batch in source.batches():
            for k, v in batch.items():
                parts.setdefault(k, []).append(v)
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        return TensorBatches(tensors, source.batch_size, source.shuffle, source.seed, source.bucket_by_length)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        if not self.shuffle:
            for start in range(0, self.n, self.batch_size):
                yield {k: v[start:start + self.batch_size] for k, v in self.tensors.items()}
            return
        rng = np.random.default_rng(self.seed + epoch)
        lengths = self.tensors["seq_len"].numpy() if "seq_len" in self.tensors else np.zeros(self.n)
        for idx in batch_order(lengths, self.batch_size, rng, self.bucket_by_length):
            index = torch.as_tensor(idx)
            yield {k: v[index] for k, v in self.tensors.items()}

    def count_rows(self) -> int:
        return self.n


def select(batch: Mapping[str, Tensor], names: Sequence[str]) -> Batch:
    return {k: batch[k] for k in names if k in batch}


def read_arrays(files: Sequence[str], fields: Sequence[str], workers: int = 1, attempts: int = 5) \
        -> dict[str, np.ndarray]:
    """Whole columns of Parquet files as numpy arrays, in file order (through Petastorm, like every read).

    For models that need their data in memory at once (the GBDT baseline); the caller bounds the size.
    A pass that read fewer rows than the files' footers hold (petastorm's start-up race, see
    :meth:`PetastormSource.batches`) is re-read.

    Raises:
        RuntimeError: the rows could not be read completely.
    """
    from petastorm import make_batch_reader

    quiet_petastorm()
    if not files:
        return {f: np.zeros(0) for f in fields}
    expected = count_rows(files)
    for attempt in range(attempts):
        parts: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        with make_batch_reader(list(files), schema_fields=list(fields), num_epochs=1, workers_count=workers,
                               reader_pool_type="thread", shuffle_row_groups=False) as reader:
            for row_group in reader:
                for k, v in row_group._asdict().items():
                    parts[k].append(np.asarray(v))
        out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        got = len(next(iter(out.values())))
        if got == expected:
            return out
        logger.warning("read %d of %d rows of %d files (attempt %d); re-reading", got, expected, len(files),
                       attempt + 1)
    raise RuntimeError(f"could not read all {expected} rows of {len(files)} Parquet files in {attempts} attempts")
