"""Hand-crafted per-example columns beside DUPN's own inputs: the comparison's hybrid model.

The comparison located most of the GBDT's lead over DUPN-all in its hand-crafted summaries of the user's
history rather than in the trees (docs/learning.md). The hybrid asks the next question: do DUPN's heads,
reading the same summaries beside the representation, reach the network on the summaries alone, and does the
representation add to them? ``model.side_inputs`` gives the item and follow heads C extra columns; this module
attaches them to the batches of ``features/training_examples`` from ``features/gbdt_examples``, whose rows
are keyed by the same ids (an impression slot's ``example_id``, a follow row's ``group_id``).

* :class:`SideTable` holds every split's columns as **quantile ranks** in [0, 1] at the training rows'
  knots (NaN where a value is missing), sorted by id: :func:`quantile_ranks`. The model turns ranks into
  piecewise-linear pieces (:class:`training.modules.QuantilePieces`), the encoding of
  :mod:`training.feature_mlp`.
* :class:`SideSource` wraps a batch source: each batch gets ``slot_side`` (B, G · C), the columns of every
  impression slot, and ``row_side`` (B, C), those of a follow row, looked up by id; the ids are dropped.
* :class:`SideWorkload` is DUPN's workload with such sources, for :func:`training.trainer.train_process`
  called in this process (its ``work`` argument): the table is held in memory and is not shipped.

The published representation does not read side inputs: only the heads do.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from core.config import TrainingConfig
from training.data import Batch, PetastormSource
from training.gbdt import feature_matrix
from training.spec import ModelSpec
from training.trainer import DUPNWorkload

logger = logging.getLogger(__name__)

ID_FIELDS = ("group_id", "example_id")  # a row's id (follow rows) and its impression slots' ids
KINDS = ("impressions", "follow")


def quantile_knots(values: np.ndarray, bins: int, max_rows: int = 200_000, seed: int = 0) -> list[np.ndarray]:
    """Per column of ``values`` (rows, C): the distinct quantiles at ``bins + 1`` equally spaced levels of its
    non-missing training values (at most ``max_rows`` rows, drawn with ``seed``); empty for an all-missing
    column."""
    if len(values) > max_rows:
        values = values[np.random.default_rng(seed).choice(len(values), max_rows, replace=False)]
    levels = np.linspace(0.0, 1.0, bins + 1)
    knots = []
    for j in range(values.shape[1]):
        col = values[:, j][~np.isnan(values[:, j])]
        knots.append(np.unique(np.quantile(col, levels)) if len(col) else np.zeros(0))
    return knots


def quantile_ranks(values: np.ndarray, knots: Sequence[np.ndarray]) -> np.ndarray:
    """(rows, C) raw values -> their ranks in [0, 1]: linear between consecutive distinct knots (the k-th of
    m + 1 knots is rank k / m), 0 below the first and 1 above the last; 0 in a column with one knot; NaN stays
    NaN (missing)."""
    out = np.full(values.shape, np.nan, dtype=np.float32)
    for j, k in enumerate(knots):
        col = values[:, j]
        present = ~np.isnan(col)
        if len(k) >= 2:
            out[present, j] = np.interp(col[present], k, np.linspace(0.0, 1.0, len(k)))
        elif len(k) == 1:
            out[present, j] = 0.0
    return out


@dataclass(frozen=True)
class SideTable:
    """Side columns of every example, as quantile ranks, per kind of row: ``ids[kind]`` sorted (N,) and
    ``ranks[kind]`` (N, C) in the same order."""

    columns: tuple[str, ...]
    ids: Mapping[str, np.ndarray]
    ranks: Mapping[str, np.ndarray]

    @staticmethod
    def build(splits: Sequence[Mapping[str, np.ndarray]], train: Mapping[str, np.ndarray], columns: Sequence[str],
              bins: int, seed: int = 0) -> "SideTable":
        """From ``features/gbdt_examples`` arrays (``example_id``, ``task`` and ``columns``; see
        :func:`training.gbdt.load_split`): knots from ``train``'s impression and follow rows, every split of
        ``splits`` (``train`` among them) looked up.

        Raises:
            ValueError: an id occurs twice within a kind (the tables would not say which row an id means).
        """
        cols = list(columns)
        fit = np.isin(np.asarray(train["task"]), KINDS)
        knots = quantile_knots(feature_matrix(train, fit, cols), bins, seed=seed)
        ids: dict[str, np.ndarray] = {}
        ranks: dict[str, np.ndarray] = {}
        for kind in KINDS:
            parts = [(np.asarray(d["example_id"], dtype=np.int64)[rows],
                      quantile_ranks(feature_matrix(d, rows, cols), knots))
                     for d in splits for rows in [np.asarray(d["task"]) == kind]]
            kid = np.concatenate([p[0] for p in parts])
            order = np.argsort(kid, kind="stable")
            kid = kid[order]
            if len(kid) > 1 and bool((kid[1:] == kid[:-1]).any()):
                dup = int(kid[1:][kid[1:] == kid[:-1]][0])
                raise ValueError(f"features/gbdt_examples: example_id {dup} occurs twice among the {kind} rows; "
                                 f"rebuild the table with build_training_set")
            ids[kind] = kid
            ranks[kind] = np.concatenate([p[1] for p in parts])[order]
        logger.info("side inputs: %d columns, %d impression slots and %d follow rows", len(cols),
                    len(ids["impressions"]), len(ids["follow"]))
        return SideTable(tuple(cols), ids, ranks)

    def lookup(self, kind: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ranks (…, C) of ids ``keys`` (any shape) among the ``kind`` rows (NaN where absent) and whether each
        was found."""
        table, values = self.ids[kind], self.ranks[kind]
        flat = keys.reshape(-1)
        at = np.minimum(np.searchsorted(table, flat), max(len(table) - 1, 0))
        found = (table[at] == flat) if len(table) else np.zeros(len(flat), dtype=bool)
        out = np.full((len(flat), len(self.columns)), np.nan, dtype=np.float32)
        out[found] = values[at[found]]
        return out.reshape(*keys.shape, len(self.columns)), found.reshape(keys.shape)

    def attach(self, batch: Batch) -> Batch:
        """``batch`` with ``slot_side`` (B, G · C) and ``row_side`` (B, C) in place of its id columns.

        Raises:
            ValueError: an impression slot of the batch (a non-zero id) has no side row.
        """
        out = dict(batch)
        slot_ids = out.pop("example_id").numpy()
        group_ids = out.pop("group_id").numpy()
        slots, found = self.lookup("impressions", slot_ids)
        real = slot_ids != 0
        if bool((real & ~found).any()):
            missing = int(slot_ids[real & ~found][0])
            raise ValueError(f"impression slot {missing} has no row in features/gbdt_examples; rebuild it for the "
                             f"training set's days (python -m jobs.build_gbdt_features) or drop model.side_inputs")
        rows, _ = self.lookup("follow", group_ids)
        out["slot_side"] = torch.from_numpy(slots.reshape(len(slot_ids), -1))
        out["row_side"] = torch.from_numpy(rows)
        return out


@dataclass(frozen=True)
class SideSource(PetastormSource):
    """A Petastorm source (which must read :data:`ID_FIELDS`) whose batches carry ``table``'s side inputs
    (:meth:`SideTable.attach`)."""

    table: SideTable | None = None

    @staticmethod
    def of(source: PetastormSource, table: SideTable) -> "SideSource":
        fields = (*source.fields, *(f for f in ID_FIELDS if f not in source.fields))
        return SideSource(**{**asdict(source), "fields": fields, "table": table})

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        if self.table is None:
            raise ValueError("SideSource needs a side table; build it with SideSource.of(source, table)")
        for batch in super().batches(epoch):
            yield self.table.attach(batch)


class SideWorkload(DUPNWorkload):
    """DUPN's workload whose readers also read the rows' ids and attach ``table``'s side inputs (in this
    process only: pass it as ``train_process(..., work=...)``)."""

    def __init__(self, spec: ModelSpec, table: SideTable) -> None:
        if spec.model.side_inputs != len(table.columns):
            raise ValueError(f"model.side_inputs is {spec.model.side_inputs} but the side table has "
                             f"{len(table.columns)} columns; set training.model.side_inputs={len(table.columns)}")
        super().__init__(spec)
        self.table = table

    def train_source(self, cfg: TrainingConfig, files: Sequence[str], rank: int = 0, world: int = 1) \
            -> PetastormSource:
        return SideSource.of(super().train_source(cfg, files, rank, world), self.table)

    def eval_source(self, cfg: TrainingConfig, files: Sequence[str]) -> PetastormSource:
        return SideSource.of(super().eval_source(cfg, files), self.table)


__all__ = ["SideTable", "SideSource", "SideWorkload", "quantile_knots", "quantile_ranks", "ID_FIELDS"]
