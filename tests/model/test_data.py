"""The batching of example groups: shuffling buffer, length bucketing, determinism (no Petastorm needed)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
import torch

from training.data import TensorBatches, batch_order, shuffled_batches, to_model_dtypes

CHUNKS = (7, 5, 9, 3, 11, 6)                     # row-group sizes of the stream
CAPACITY = 12                                    # buffers: chunks {0, 1}, {2, 3}, {4, 5}
BUFFERS = ((0, 12), (12, 24), (24, 41))          # row-id ranges of each buffer


def _chunks(seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Row groups of a stream: ``row`` = position in the stream, ``seq_len`` in 0..20 with ties."""
    rng = np.random.default_rng(seed)
    start = 0
    for n in CHUNKS:
        yield {"row": np.arange(start, start + n), "seq_len": rng.integers(0, 21, n).astype(np.int32),
               "slots": np.arange(start, start + n).repeat(3).reshape(n, 3) * 10}
        start += n


def _lengths() -> np.ndarray:
    return np.concatenate([c["seq_len"] for c in _chunks()])


def _contiguous(batches: list[np.ndarray]) -> bool:
    """True when each batch holds a contiguous run of the sorted lengths: the batches, each sorted and
    ordered by their shortest length, list all lengths in sorted order."""
    ordered = sorted((np.sort(b) for b in batches), key=lambda b: (int(b[0]), int(b[-1])))
    return bool(np.all(np.diff(np.concatenate(ordered)) >= 0))


@pytest.mark.parametrize("bucket", [False, True])
def test_batch_order_emits_every_row_once_in_full_batches(bucket: bool) -> None:
    lengths = np.random.default_rng(1).integers(0, 30, 103)
    batches = batch_order(lengths, 10, np.random.default_rng(2), bucket)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(103))
    assert sorted(len(b) for b in batches) == [3] + [10] * 10
    if bucket:
        assert _contiguous([np.sort(lengths[b]) for b in batches])
        firsts = [int(lengths[b].min()) for b in batches]
        assert firsts != sorted(firsts)            # ... but the batches come in a random order
    else:
        assert not _contiguous([np.sort(lengths[b]) for b in batches])


def test_bucketing_keeps_equal_lengths_in_random_order() -> None:
    lengths = np.zeros(40, dtype=np.int64)
    a = batch_order(lengths, 8, np.random.default_rng(3), bucket=True)
    b = batch_order(lengths, 8, np.random.default_rng(4), bucket=True)
    assert np.concatenate(a).tolist() != list(range(40)) and np.concatenate(a).tolist() != np.concatenate(b).tolist()


@pytest.mark.parametrize("bucket", [False, True])
def test_shuffled_batches_emit_every_row_exactly_once_per_pass(bucket: bool) -> None:
    batches = list(shuffled_batches(_chunks(), batch_size=4, capacity=CAPACITY, seed=5, shuffle=True, bucket=bucket))
    rows = np.concatenate([b["row"] for b in batches])
    assert sorted(rows.tolist()) == list(range(sum(CHUNKS)))
    assert rows.tolist() != list(range(sum(CHUNKS)))                 # shuffled
    for b in batches:
        # the columns of a row stay together
        np.testing.assert_array_equal(b["slots"], b["row"].repeat(3).reshape(-1, 3) * 10)
        assert len(b["row"]) <= 4
        # a batch never mixes two shuffling buffers
        assert any(lo <= b["row"].min() and b["row"].max() < hi for lo, hi in BUFFERS)


def test_with_bucketing_a_batchs_lengths_are_contiguous_in_sorted_order() -> None:
    lengths = _lengths()
    batches = list(shuffled_batches(_chunks(), batch_size=4, capacity=CAPACITY, seed=6, shuffle=True, bucket=True))
    for lo, hi in BUFFERS:
        inside = [np.sort(b["seq_len"]) for b in batches if lo <= b["row"].min() < hi]
        assert sorted(np.concatenate(inside).tolist()) == sorted(lengths[lo:hi].tolist())
        assert _contiguous(inside), (lo, hi, inside)
    # one buffer over the whole stream: contiguous over everything
    whole = list(shuffled_batches(_chunks(), batch_size=4, capacity=1000, seed=6, shuffle=True, bucket=True))
    assert _contiguous([b["seq_len"] for b in whole])
    plain = shuffled_batches(_chunks(), batch_size=4, capacity=1000, seed=6, shuffle=True, bucket=False)
    assert not _contiguous([b["seq_len"] for b in plain])


@pytest.mark.parametrize("bucket", [False, True])
def test_the_same_seed_gives_the_same_batches_and_another_seed_others(bucket: bool) -> None:
    def rows(seed: int) -> list[list[int]]:
        return [b["row"].tolist() for b in shuffled_batches(_chunks(), batch_size=4, capacity=CAPACITY, seed=seed,
                                                            shuffle=True, bucket=bucket)]

    assert rows(7) == rows(7)
    assert rows(7) != rows(8)


def test_without_shuffle_the_stream_order_is_kept() -> None:
    batches = list(shuffled_batches(_chunks(), batch_size=4, capacity=CAPACITY, seed=9, shuffle=False, bucket=True))
    assert np.concatenate([b["row"] for b in batches]).tolist() == list(range(sum(CHUNKS)))
    assert max(len(b["row"]) for b in batches) == 4
    assert list(shuffled_batches(iter([{"row": np.zeros(0)}]), 4, CAPACITY, 0, shuffle=False, bucket=False)) == []


def _tensors(n: int = 23) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"row": torch.arange(n), "seq_len": torch.randint(0, 8, (n,), generator=gen),
            "label_click": torch.rand(n, 4, generator=gen)}


def test_tensor_batches_without_shuffle_keep_the_order() -> None:
    source = TensorBatches(_tensors(), batch_size=5, shuffle=False, seed=3, bucket_by_length=True)
    for epoch in (0, 1):
        batches = list(source.batches(epoch))
        assert [len(b["row"]) for b in batches] == [5, 5, 5, 5, 3]
        assert torch.cat([b["row"] for b in batches]).tolist() == list(range(23))
        torch.testing.assert_close(torch.cat([b["label_click"] for b in batches]), _tensors()["label_click"])
    assert source.count_rows() == 23


def test_tensor_batches_shuffle_per_epoch_and_seed() -> None:
    def rows(seed: int, epoch: int, bucket: bool = False) -> list[list[int]]:
        source = TensorBatches(_tensors(), batch_size=5, shuffle=True, seed=seed, bucket_by_length=bucket)
        return [b["row"].tolist() for b in source.batches(epoch)]

    assert sorted(r for b in rows(0, 0) for r in b) == list(range(23))
    assert rows(0, 0) == rows(0, 0) and rows(0, 0) != rows(0, 1) and rows(0, 0) != rows(1, 0)
    assert rows(1, 0) == rows(0, 1)                                  # the epoch offsets the seed
    lengths = _tensors()["seq_len"].numpy()
    assert _contiguous([np.sort(lengths[b]) for b in rows(0, 0, bucket=True)])


def test_tensor_batches_refuse_columns_of_different_lengths() -> None:
    with pytest.raises(ValueError, match=r"same number of rows, got \[3, 4\]"):
        TensorBatches({"a": torch.zeros(3), "b": torch.zeros(4)}, batch_size=2)


def test_model_dtypes() -> None:
    out = to_model_dtypes({"item": np.array([[1, 2]], dtype=np.int32), "price": np.array([1.5], dtype=np.float64),
                           "mask": torch.tensor([True]), "talent": torch.tensor([3], dtype=torch.int16)})
    assert (out["item"].dtype, out["price"].dtype, out["mask"].dtype, out["talent"].dtype) == (
        torch.int64, torch.float32, torch.bool, torch.int64)
    assert out["item"].tolist() == [[1, 2]] and out["price"].tolist() == [1.5]
