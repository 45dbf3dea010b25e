"""Which Parquet files a training run reads, and the frozen normalisation statistics it uses."""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from core import tables as t
from core.errors import PlatformError
from features.stats import FeatureStat, category_prices, has_reference, norm_from_stats, read_stats

if TYPE_CHECKING:
    from core.delta import DeltaTables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """One snapshot of ``features/training_examples`` (or of ``features/hybrid_examples``, ``table``): the
    files of the training days and of the validation and test splits (the evaluation protocol,
    :mod:`core.protocol`), and for the hybrid table its side columns and their knots."""

    version: int
    train_days: tuple[str, ...]
    valid_days: tuple[str, ...]
    test_days: tuple[str, ...]
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    test_files: tuple[str, ...]
    tasks: tuple[str, ...]
    logit_offsets: dict[str, float]
    table: str = t.TRAINING_EXAMPLES.name
    side_columns: tuple[str, ...] = ()
    side_knots: tuple[tuple[float, ...], ...] = ()

    def describe(self) -> str:
        def span(days: tuple[str, ...]) -> str:
            return "-" if not days else days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
        return (f"{self.table} v{self.version}: train {span(self.train_days)} "
                f"({len(self.train_files)} files), validation {span(self.valid_days)}, test {span(self.test_days)}")


def training_data(tables: "DeltaTables", train_days: Sequence[str], wanted_tasks: Sequence[str],
                  valid_days: Sequence[str] | None = None, test_days: Sequence[str] | None = None,
                  allow_valid_overlap: bool = False, table: t.TableSpec = t.TRAINING_EXAMPLES) -> TrainingData:
    """Resolve the files of ``train_days`` and of the validation and test days (default: the splits
    recorded by the latest ``build_training_set`` run), all from one table version.

    Args:
        allow_valid_overlap: training days may be validation days (incremental training, which
            selects nothing); training on a test day is never allowed.
        table: the examples' table: ``features/training_examples``, or ``features/hybrid_examples`` (the
            same rows with the hybrid model's side inputs; its ``side`` is then the columns and knots).

    Raises:
        PlatformError: a day is missing, or a training day is a test (or validation) day.
    """
    builder = t.BUILT_BY[table.name]
    if not tables.exists(table):
        raise PlatformError(f"{table.name} does not exist; run jobs/{builder}.py first")
    version = tables.version(table)
    meta = tables.metadata(table, version)
    splits = meta.get("splits") or {}
    valid = list(valid_days) if valid_days is not None else list(splits.get("valid") or [])
    test = list(test_days) if test_days is not None else list(splits.get("test") or [])
    if not test:
        raise PlatformError(f"{table.name} records no test days: rebuild it with {builder} (this code version), or "
                            f"pass the test days")
    present = set(tables.partitions(table, version))
    missing = [d for d in [*train_days, *valid, *test] if d not in present]
    if missing:
        raise PlatformError(f"{table.name} has no partition {', '.join(missing)}; run {builder} for those days")
    on_test = sorted(set(train_days) & set(test))
    if on_test:
        raise PlatformError(f"training days {', '.join(on_test)} are test days; train on earlier days or rebuild "
                            f"the training set with a later --end")
    on_valid = sorted(set(train_days) & set(valid))
    if on_valid and not allow_valid_overlap:
        raise PlatformError(f"training days {', '.join(on_valid)} are validation days; model selection would read "
                            f"its own training data: train on earlier days")
    tasks = [x for x in wanted_tasks if x in (meta.get("tasks") or t.TASKS)]
    if not tasks:
        raise PlatformError(f"none of the tasks {list(wanted_tasks)} is in the training set ({meta.get('tasks')})")
    offsets = {str(k): float(v) for k, v in (meta.get("logit_offsets") or {}).items()}
    side = meta.get("side") or {}
    if table is t.HYBRID_EXAMPLES and not side.get("columns"):
        raise PlatformError(f"{table.name} version {version} records no side columns in its commit metadata: "
                            f"rebuild it with {builder}")
    return TrainingData(version, tuple(train_days), tuple(valid), tuple(test),
                        tuple(tables.files(table, list(train_days), version)),
                        tuple(tables.files(table, valid, version)) if valid else (),
                        tuple(tables.files(table, test, version)), tuple(tasks), offsets, table.name,
                        tuple(side.get("columns") or ()), tuple(tuple(k) for k in side.get("knots") or ()))


@dataclass(frozen=True)
class Statistics:
    """One day's serving-population statistics (``features/feature_stats``)."""

    day: str
    version: int
    rank_dim: int
    stats: tuple[FeatureStat, ...]

    def model_inputs(self, price_reference: str) -> dict[str, Any]:
        """``ModelSpec.from_config``'s ``norm`` and ``category_log_price`` under ``model.price_reference``.

        Raises:
            PlatformError: the day's statistics lack that reference's (written by an older feature_stats).
        """
        if not has_reference(self.stats, price_reference):
            raise PlatformError(f"features/feature_stats dt={self.day} has no statistics of "
                                f"model.price_reference={price_reference!r} (written before they existed); rerun "
                                f"`python -m jobs.feature_stats --date {self.day}` or set "
                                f"training.model.price_reference=catalogue")
        return {"norm": norm_from_stats(self.stats, self.rank_dim, price_reference),
                "category_log_price": category_prices(self.stats, price_reference)}


def serving_statistics(tables: "DeltaTables", until: _dt.date, rank_dim: int) -> Statistics:
    """The serving-population statistics of the latest ``feature_stats`` day <= ``until``."""
    if not tables.exists(t.FEATURE_STATS):
        raise PlatformError("features/feature_stats does not exist; run jobs/feature_stats.py first")
    version = tables.version(t.FEATURE_STATS)
    days = [d for d in tables.partitions(t.FEATURE_STATS, version) if d <= until.isoformat()]
    if not days:
        raise PlatformError(f"features/feature_stats has no day on or before {until}; run feature_stats")
    stats = read_stats(tables.read(t.FEATURE_STATS, dt=days[-1], version=version))
    return Statistics(days[-1], version, rank_dim, tuple(stats))
