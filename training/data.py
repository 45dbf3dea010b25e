"""Petastorm -> PyTorch: batches of training examples as dicts of tensors.

Each training process reads its own shard of the training table's Parquet files
(``cur_shard = rank``, ``shard_count = world size``; Petastorm shards by row group) through
``make_batch_reader`` and Petastorm's ``BatchedDataLoader`` (torch-side shuffling buffer).
The file list comes from the Delta snapshot (:meth:`core.delta.DeltaTables.files`), so a
training run reads exactly one table version. :class:`TensorBatches` feeds the same batches
from memory (the benchmark's reference and the tests' tiny runs).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

Batch = dict[str, Tensor]

USER_FIELDS = ("seq_len", "seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_behavior",
               "seq_scene", "seq_time_bucket", "seq_log_price", "user_age", "user_gender", "user_city", "user_dense")
EXAMPLE_FIELDS = ("task_id", "group_id", "query_tokens", "item", "item_shop", "item_brand", "item_category",
                  "item_tags", "item_log_price", "talent", "talent_category", "rank_features", "label_click",
                  "label_cart", "label_buy", "label_follow", "label_tier", "l2r_weight", "sample_weight")
TRAIN_FIELDS = USER_FIELDS + EXAMPLE_FIELDS


def quiet_petastorm() -> None:
    """Silence the deprecation warnings petastorm 0.13.1 raises on every read with pyarrow 14
    (its legacy ``ParquetDataset`` use is the known upstream issue uber/petastorm#806)."""
    for module in ("petastorm", "pyarrow"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    # field lists are exact names here, so the old prefix-matching behaviour it warns about never applied
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)


def to_model_dtypes(batch: Mapping[str, object]) -> Batch:
    """Integer columns -> int64 (embedding indices, labels), floating columns -> float32."""
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


@dataclass(frozen=True)
class PetastormSource:
    """Where and how one process reads its examples.

    Attributes:
        files: ``file://`` (or object-store) URLs of the Parquet files of one table snapshot.
        fields: columns to read (all numeric, fixed-length arrays).
        batch_size: rows per batch.
        shard, shard_count: this process's shard (its rank) and the number of shards.
        shuffle: shuffle row groups and rows (training) or keep the order (evaluation).
        shuffle_capacity: rows in the torch-side shuffling buffer.
        workers: Petastorm reader threads.
        seed: shuffling seed (varied per epoch by the caller).
    """

    files: tuple[str, ...]
    fields: tuple[str, ...] = TRAIN_FIELDS
    batch_size: int = 1024
    shard: int = 0
    shard_count: int = 1
    shuffle: bool = True
    shuffle_capacity: int = 20_000
    workers: int = 2
    seed: int = 0
    empty_pass_attempts: int = 5

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
        from petastorm.pytorch import BatchedDataLoader

        quiet_petastorm()
        shard_args = {"cur_shard": self.shard, "shard_count": self.shard_count} if self.shard_count > 1 else {}
        reader = make_batch_reader(
            list(self.files), schema_fields=list(self.fields), num_epochs=1, workers_count=self.workers,
            reader_pool_type="thread", shuffle_row_groups=self.shuffle, seed=self.seed + epoch,
            **shard_args)
        try:
            loader = BatchedDataLoader(reader, batch_size=self.batch_size,
                                       shuffling_queue_capacity=self.shuffle_capacity if self.shuffle else 0)
            for batch in loader:
                yield to_model_dtypes(batch)
        finally:
            reader.stop()
            reader.join()


class TensorBatches:
    """The same batches fed from tensors held in memory."""

    def __init__(self, tensors: Batch, batch_size: int, shuffle: bool = True, seed: int = 0):
        sizes = {len(v) for v in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {sorted(sizes)}")
        self.tensors = tensors
        self.n = sizes.pop()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed

    @staticmethod
    def collect(source: PetastormSource) -> "TensorBatches":
        """Read a whole source into memory (tests and the benchmark only: bounded by its caller)."""
        parts: dict[str, list[Tensor]] = {}
        for batch in source.batches():
            for k, v in batch.items():
                parts.setdefault(k, []).append(v)
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        return TensorBatches(tensors, source.batch_size, source.shuffle, source.seed)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield {k: v[idx] for k, v in self.tensors.items()}


def select(batch: Mapping[str, Tensor], names: Sequence[str]) -> Batch:
    return {k: batch[k] for k in names if k in batch}
