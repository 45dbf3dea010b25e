"""The evaluation protocol's data side: which examples train, select and test a model.

Every model of the platform (DUPN, its ablations and designs, the baselines, the GBDT, the
transfer methods) is trained, selected and scored on the splits defined here; the scoring
side (metrics, model selection, seeds, the bootstrap of the promotion gate) is
:mod:`training.evaluation`. ``docs/evaluation.md`` describes both.

* **Time split.** The days of a training-set range are cut in three: the last
  ``training_set.test_days`` are the **test** split, the ``validation_days`` before them the
  **validation** split, the rest the **training** split. Epochs, early stopping and any tuning
  read the validation split only; the test split is scored once per run, after selection.
* **User split for per-user labels.** A purchasing-power tier is a per-user constant, so a
  model scored on users whose labels it trained on measures memory as much as learning. A
  hash of the user id puts a share of users in a validation group and another in a test group
  (``ppp_validation_user_share``, ``ppp_test_user_share``): their labels never reach training.
  The validation split scores PPP on the validation users, the test split on the test users
  ("unseen"); the training users' labels of those days give the "seen" number beside it.
* Validation and test are never sampled: their metrics are comparable with the oracle's.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from core.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import Column

    from core.config import TrainingSetConfig


def range_days(start: _dt.date, end: _dt.date) -> list[str]:
    """The ``dt`` strings of the days ``start`` .. ``end``, both included, in order."""
    return [(start + _dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
# ppp_user: which group a user's purchasing-power labels belong to
PPP_TRAIN_USER, PPP_VALID_USER, PPP_TEST_USER = 0, 1, 2
PPP_USER_OF_SPLIT = {VALID: PPP_VALID_USER, TEST: PPP_TEST_USER}
HASH_SPACE = 1_000_000


@dataclass(frozen=True)
class DaySplit:
    """The days of a range, by split (each tuple in date order)."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise KeyError(f"unknown split '{split}'; splits are {SPLITS}")
        return {TRAIN: self.train, VALID: self.valid, TEST: self.test}[split]

    @property
    def all_days(self) -> tuple[str, ...]:
        """Every day of the range, in date order."""
        return self.train + self.valid + self.test

    def as_dict(self) -> dict[str, list[str]]:
        return {TRAIN: list(self.train), VALID: list(self.valid), TEST: list(self.test)}

    def describe(self) -> str:
        def span(days: tuple[str, ...]) -> str:
            return "-" if not days else days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
        return f"train {span(self.train)}, validation {span(self.valid)}, test {span(self.test)}"


def split_days(days: Sequence[str], validation_days: int, test_days: int) -> DaySplit:
    """Cut the sorted ``days`` of a range into training, validation and test days.

    Raises:
        PlatformError: the range leaves no training day.
    """
    days = sorted(days)
    if len(days) <= validation_days + test_days:
        raise PlatformError(f"a range of {len(days)} day(s) leaves no training day with training_set.validation_days="
                            f"{validation_days} and test_days={test_days}; widen --start/--end")
    n_train = len(days) - validation_days - test_days
    return DaySplit(tuple(days[:n_train]), tuple(days[n_train:n_train + validation_days]),
                    tuple(days[n_train + validation_days:]))


def day_split_column(dt: "Column", split: DaySplit) -> "Column":
    """Spark expression: the split (``train`` / ``valid`` / ``test``) of each row's ``dt``."""
    from pyspark.sql import functions as F

    return (F.when(dt.isin(*split.test), F.lit(TEST)).when(dt.isin(*split.valid), F.lit(VALID))
            .otherwise(F.lit(TRAIN)))


def user_uniform(user_id: "Column", seed: int, salt: str) -> "Column":
    """A deterministic pseudo-uniform number in [0, 1) per user (hash of ``seed``, ``salt`` and the id)."""
    from pyspark.sql import functions as F

    return (F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), user_id), F.lit(HASH_SPACE)) / HASH_SPACE).cast("double")


def ppp_user_column(user_id: "Column", cfg: "TrainingSetConfig") -> "Column":
    """Spark expression: ``PPP_VALID_USER`` / ``PPP_TEST_USER`` for the held-out user shares, else
    ``PPP_TRAIN_USER``. Stable across runs and days (a hash of the user id and ``training_set.seed``)."""
    from pyspark.sql import functions as F

    u = user_uniform(user_id, cfg.seed, "ppp_user")
    v = cfg.ppp_validation_user_share
    return (F.when(u < F.lit(v), F.lit(PPP_VALID_USER))
            .when(u < F.lit(v + cfg.ppp_test_user_share), F.lit(PPP_TEST_USER))
            .otherwise(F.lit(PPP_TRAIN_USER)).cast("int"))
