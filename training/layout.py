"""Where each part of a published user vector lies: the blocks of a model's representation.

A DUPN representation is three blocks of very different norm: the dense part, the attention heads'
interests and the behaviour-type prices. :func:`published_layout` reads them off a model's user
tower; :func:`layout_metadata` turns them into the JSON the nightly job records in its commit, and
:func:`blocks_from_metadata` reads that back (for a similarity that weighs every block equally,
see ``features/representations.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import PlatformError


@dataclass(frozen=True)
class Block:
    """One part of the published vector: ``columns`` (sorted indices into it)."""

    key: str
    label: str
    columns: np.ndarray


def runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """The contiguous runs of the sorted column indices, each as (first, last) inclusive:
    ``[0, 1, 2, 5]`` -> ``[(0, 2), (5, 5)]``."""
    cols = np.sort(np.asarray(columns, dtype=np.int64))
    if not len(cols):
        return []
    breaks = np.flatnonzero(np.diff(cols) != 1)
    starts, stops = np.r_[cols[0], cols[breaks + 1]], np.r_[cols[breaks], cols[-1]]
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def column_runs(columns: np.ndarray) -> str:
    """``dims 0–127`` (or ``dims 0–3, 8–9``): the contiguous runs of sorted column indices."""
    found = runs(columns)
    if not found:
        return "no dims"
    return "dims " + ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in found)


def published_layout(model: Any) -> list[Block]:
    """The blocks of the representation ``model`` (a :class:`training.model.TaskModel`) publishes, read off
    its user tower: the dense part (the ``tower.dense_dim`` leading columns), the attention heads'
    interests (the columns :meth:`training.model.UserTower.interests` reads) and the rest of
    :meth:`training.model.UserTower.price_features` (the behaviour-type prices and counts; each interest's
    own price column belongs to the interests). The accessors are applied to the column indices
    themselves, so the blocks are exactly what the model's heads read. [] when the tower has no such
    accessors (the baselines' towers: an opaque vector).

    Raises:
        PlatformError: the blocks overlap or do not cover the ``model.embedding_dim`` columns.
    """
    import torch

    tower: Any = getattr(model, "tower", None)
    if not all(hasattr(tower, a) for a in ("dense_dim", "interests", "price_features")):
        return []
    dim = int(model.embedding_dim)
    index = torch.arange(dim, dtype=torch.float64).unsqueeze(0)  # (1, D): each column holds its own index
    with torch.no_grad():
        interests = tower.interests(index)  # (1, K + P, Dk + 1)
        prices = tower.price_features(index).reshape(-1)
        activity = tower.activity(index).reshape(-1) if hasattr(tower, "activity") else index[0, :0]
        profile = tower.category_profile(index).reshape(-1) if getattr(tower, "profile_buckets", 0) \
            else index[0, :0]
    n, width = int(interests.shape[1]), int(interests.shape[2])
    pools = int(activity.shape[0])
    dense = np.arange(int(tower.dense_dim), dtype=np.int64)
    interest_cols = np.sort(interests.reshape(-1).long().numpy())
    price_cols = np.union1d(np.setdiff1d(prices.long().numpy(), interest_cols), activity.long().numpy())
    who = f"the {n - pools} attention heads' and {pools} time-decay pools'" if pools else \
        f"the {n} attention heads'"
    blocks = [Block("dense", f"dense part ({column_runs(dense)})", dense),
              Block("interests", f"{who} interests ({n} x ({width - 1} key + 1 price), "
                                 f"{column_runs(interest_cols)})", interest_cols)]
    if len(price_cols):
        label = "behaviour-type prices and counts" + (", the pools' decayed counts" if pools else "")
        blocks.append(Block("prices", f"{label} ({column_runs(price_cols)})", price_cols))
    if len(profile):
        profile_cols = np.sort(profile.long().numpy())
        blocks.append(Block("profile", f"the pools' decayed counts per category ({column_runs(profile_cols)})",
                            profile_cols))
    _check_partition(blocks, dim, "the user tower's blocks")
    return blocks


def layout_metadata(blocks: list[Block]) -> list[dict[str, Any]]:
    """JSON-friendly blocks for commit metadata: ``[{"block": "dense", "runs": [[0, 127]]}, ...]``
    (runs of column indices, first and last inclusive)."""
    return [{"block": b.key, "runs": [[a, z] for a, z in runs(b.columns)]} for b in blocks]


def blocks_from_metadata(raw: Any, dim: int) -> list[Block]:
    """The blocks of recorded ``layout`` metadata (:func:`layout_metadata`) over a ``dim``-float vector.

    Raises:
        PlatformError: the layout is malformed, or its blocks overlap or do not cover the ``dim``
            columns (the vectors were not written by the model whose layout was recorded).
    """
    if not isinstance(raw, list) or not raw:
        raise PlatformError(f"recorded layout is not a non-empty list of blocks: {raw!r:.200}")
    blocks = []
    for entry in raw:
        key = entry.get("block") if isinstance(entry, dict) else None
        spans = entry.get("runs") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not isinstance(spans, list) or not spans or not all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and 0 <= r[0] <= r[1]
                for r in spans):
            raise PlatformError(f"recorded layout block is not {{'block': name, 'runs': [[first, last], ...]}}: "
                                f"{entry!r:.200}")
        columns = np.sort(np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in spans]))
        blocks.append(Block(key, f"{key} ({column_runs(columns)})", columns))
    _check_partition(blocks, dim, "the recorded layout's blocks")
    return blocks


def _check_partition(blocks: list[Block], dim: int, what: str) -> None:
    every = np.sort(np.concatenate([b.columns for b in blocks]))
    if len(every) != dim or (every != np.arange(dim)).any():
        found = ", ".join(f"{b.key} {column_runs(b.columns)}" for b in blocks)
        raise PlatformError(f"{what} ({found}) overlap or do not cover the {dim} published floats")
