"""Which Parquet files a training run reads, and the frozen normalisation statistics it uses."""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from core import tables as t
from core.errors import PlatformError
from features.stats import norm_from_stats, read_stats

if TYPE_CHECKING:
    from core.delta import DeltaTables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """One snapshot of ``features/training_examples`` split into training and held-out files."""

    version: int
    train_days: tuple[str, ...]
    eval_days: tuple[str, ...]
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    tasks: tuple[str, ...]

    def describe(self) -> str:
        return (f"features/training_examples v{self.version}: train {self.train_days[0]}..{self.train_days[-1]} "
                f"({len(self.train_files)} files), held out {', '.join(self.eval_days)} ({len(self.eval_files)} files)")


def training_data(tables: "DeltaTables", train_days: Sequence[str], eval_days: Sequence[str] | None,
                  wanted_tasks: Sequence[str]) -> TrainingData:
    """Resolve the files of ``train_days`` and of the held-out days (default: the held-out days of
    the latest ``build_training_set`` run), all from one table version.

    Raises:
        PlatformError: a day is missing, or a training day is a held-out day.
    """
    if not tables.exists(t.TRAINING_EXAMPLES):
        raise PlatformError("features/training_examples does not exist; run jobs/build_training_set.py first")
    version = tables.version(t.TRAINING_EXAMPLES)
    meta = tables.metadata(t.TRAINING_EXAMPLES, version)
    held = list(eval_days) if eval_days else list(meta.get("holdout_days") or [])
    if not held:
        raise PlatformError("no held-out days: pass --eval-days or rebuild the training set")
    present = set(tables.partitions(t.TRAINING_EXAMPLES, version))
    missing = [d for d in [*train_days, *held] if d not in present]
    if missing:
        raise PlatformError(f"features/training_examples has no partition {', '.join(missing)}; "
                            f"run build_training_set for those days")
    overlap = sorted(set(train_days) & set(held))
    if overlap:
        raise PlatformError(f"training days {', '.join(overlap)} are held out for evaluation; train on earlier "
                            f"days or rebuild the training set with a later --end")
    tasks = [x for x in wanted_tasks if x in (meta.get("tasks") or t.TASKS)]
    if not tasks:
        raise PlatformError(f"none of the tasks {list(wanted_tasks)} is in the training set ({meta.get('tasks')})")
    return TrainingData(version, tuple(train_days), tuple(held),
                        tuple(tables.files(t.TRAINING_EXAMPLES, list(train_days), version)),
                        tuple(tables.files(t.TRAINING_EXAMPLES, held, version)), tuple(tasks))


@dataclass(frozen=True)
class Statistics:
    day: str
    version: int
    norm: dict[str, tuple[list[float], list[float]]]


def serving_statistics(tables: "DeltaTables", until: _dt.date, rank_dim: int) -> Statistics:
    """The serving-population statistics of the latest ``feature_stats`` day <= ``until``."""
    if not tables.exists(t.FEATURE_STATS):
        raise PlatformError("features/feature_stats does not exist; run jobs/feature_stats.py first")
    version = tables.version(t.FEATURE_STATS)
    days = [d for d in tables.partitions(t.FEATURE_STATS, version) if d <= until.isoformat()]
    if not days:
        raise PlatformError(f"features/feature_stats has no day on or before {until}; run feature_stats")
    stats = read_stats(tables.read(t.FEATURE_STATS, dt=days[-1], version=version))
    return Statistics(days[-1], version, norm_from_stats(stats, rank_dim))
