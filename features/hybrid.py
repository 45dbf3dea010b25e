"""The hybrid model's training examples: ``features/training_examples`` rows with the hand-crafted
summaries of ``features/gbdt.py`` beside them (``core.tables.HYBRID_EXAMPLES``).

The comparison located most of the GBDT's lead over DUPN-all in its hand-crafted summaries of the user's
history (docs/learning.md); the hybrid model's item and follow heads read them beside the representation
(``training.hybrid``). They travel in the training set, so the Petastorm reader streams them with each row:

* :func:`pack_side` puts the C columns of every impression slot of a row into ``slot_side`` (G * C, in the
  order of the row's ``example_id`` slots) and those of a follow row into ``row_side`` (C). A missing value,
  a padding slot and every slot of a row of another kind are NaN.
* :func:`side_knots` gives each column's quantiles over the training split's impression slots and follow
  rows. The trained model keeps them in its spec and turns each raw value into its quantile rank itself
  (``training.modules.QuantileRanks``), so scoring later needs the raw values only.

No torch and no MLflow here: Spark transforms only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from core import protocol as pr

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

SIDE_KINDS = ("impressions", "follow")  # the kinds of row whose heads read side inputs


def _values(columns: Sequence[str]) -> "Column":
    """The C columns of a features/gbdt_examples row as one float array, NaN where a value is missing."""
    from pyspark.sql import functions as F

    nan = F.lit(float("nan")).cast("float")
    return F.array(*[F.coalesce(F.col(c).cast("float"), nan) for c in columns])


def pack_side(examples: "DataFrame", side: "DataFrame", columns: Sequence[str], group_size: int) -> "DataFrame":
    """``examples`` (training_examples rows) with ``slot_side`` (G * C) and ``row_side`` (C) from ``side``
    (features/gbdt_examples rows of the same examples: ``example_id``, ``task`` and ``columns``)."""
    from pyspark.sql import functions as F

    c, g = len(columns), group_size
    values = _values(columns)
    slot_rows = side.where(F.col("task") == "impressions").select(F.col("example_id").alias("_eid"), values.alias("_v"))
    slots = (examples.select("group_id", F.posexplode("example_id").alias("_pos", "_eid"))
             .where(F.col("_eid") != 0)
             .join(slot_rows, "_eid", "left")
             .groupBy("group_id").agg(F.collect_list(F.struct("_pos", "_v")).alias("_slots")))
    # slot i's values, or NaN for a padding slot (no example) and a slot whose example has no side row
    packed = F.expr(
        f"flatten(transform(sequence(0, {g - 1}), i -> coalesce(element_at(filter(_slots, s -> s._pos = i), 1)._v, "
        f"array_repeat(cast('NaN' as float), {c}))))")
    slots = slots.select("group_id", packed.alias("slot_side"))
    follow = side.where(F.col("task") == "follow").select(F.col("example_id").alias("group_id"),
                                                          values.alias("row_side"))
    out = examples.join(slots, "group_id", "left").join(follow, "group_id", "left")
    nan = F.lit(float("nan")).cast("float")
    return (out.withColumn("slot_side", F.coalesce("slot_side", F.array_repeat(nan, g * c)))
            .withColumn("row_side", F.coalesce("row_side", F.array_repeat(nan, c))))


def side_knots(side: "DataFrame", columns: Sequence[str], bins: int, accuracy: int = 10_000) -> list[list[float]]:
    """Per column: its distinct approximate quantiles at ``bins + 1`` equally spaced levels over the training
    split's impression slots and follow rows of ``side`` (empty for a column with no value there)."""
    from pyspark.sql import functions as F

    levels = [i / bins for i in range(bins + 1)]
    fit = side.where((F.col("split") == pr.TRAIN) & F.col("task").isin(*SIDE_KINDS))

    def present(c: str) -> "Column":
        x = F.col(c).cast("double")
        return F.when(~F.isnan(x), x)

    row = fit.agg(*[F.percentile_approx(present(c), levels, accuracy).alias(f"_q{j}")
                    for j, c in enumerate(columns)]).collect()[0]
    return [sorted({float(v) for v in (row[f"_q{j}"] or []) if v is not None}) for j in range(len(columns))]


__all__ = ["SIDE_KINDS", "pack_side", "side_knots"]
