"""Stable encoding of raw values into embedding indices.

Index 0 is padding and index 1 is "unknown / null" in every field. Ids are **feature-hashed**
(Spark's ``xxhash64`` with the field name as salt, modulo the configured bucket count), not
looked up in a vocabulary, because:

* the same raw id maps to the same index on every day, in every job and in every
  incremental training run, with no state to persist, version or keep consistent between
  the nightly job and training;
* new ids need no vocabulary update and no embedding-table resize (incremental training
  warm-starts from the champion with identical shapes);
* it runs as a plain Spark expression on executors, so it scales with the data.

The price is collisions, kept rare by bucket counts well above the id counts
(``sequences.hash_buckets``; the cluster example uses far larger tables).

Small closed vocabularies (behaviour type, scene, profile levels) are enumerated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core.config import HashBuckets

if TYPE_CHECKING:
    from pyspark.sql import Column

PAD, UNKNOWN = 0, 1

BEHAVIOR_INDEX = {"click": 2, "fav": 3, "cart": 4, "buy": 5}
SCENE_INDEX = {"search": 2, "recommend": 3, "promo": 4}
GENDER_INDEX = {"F": 2, "M": 3}
N_BEHAVIOR = 6
N_SCENE = 5
N_GENDER = 4
MAX_LEVEL = 9  # age_level / city_level values above are clipped
N_LEVEL = MAX_LEVEL + 3
# Behaviour weights of the learning-to-rank task (the paper: buy > cart > click > none).
L2R_WEIGHTS = {"buy": 4.0, "cart": 2.0, "click": 1.0, "none": 1.0}


def n_time_buckets(edges: list[int]) -> int:
    """Vocabulary size of the age-bucket field: padding, one bucket per edge, and "older"."""
    return len(edges) + 2


def hashed(col: "Column", field: str, buckets: int) -> "Column":
    """Index in ``[2, buckets)`` for a non-null value, ``UNKNOWN`` for null (Spark expression)."""
    from pyspark.sql import functions as F

    h = F.pmod(F.xxhash64(F.lit(field), col.cast("string")), F.lit(buckets - 2)) + F.lit(2)
    return F.when(col.isNull(), F.lit(UNKNOWN)).otherwise(h).cast("int")


def enum_index(col: "Column", mapping: dict[str, int]) -> "Column":
    """Index of a closed vocabulary; null and unseen values map to ``UNKNOWN``."""
    from pyspark.sql import functions as F

    expr = F.lit(UNKNOWN)
    for value, idx in mapping.items():
        expr = F.when(col == F.lit(value), F.lit(idx)).otherwise(expr)
    return expr.cast("int")


def level_index(col: "Column") -> "Column":
    """``age_level`` / ``city_level``: 2 + clipped level, ``UNKNOWN`` for null."""
    from pyspark.sql import functions as F

    clipped = F.least(F.greatest(col, F.lit(0)), F.lit(MAX_LEVEL))
    return F.when(col.isNull(), F.lit(UNKNOWN)).otherwise(clipped + 2).cast("int")


def time_bucket(age_seconds: "Column", edges: list[int]) -> "Column":
    """Bucket 1..len(edges)+1 of a behaviour's age (seconds before the snapshot time)."""
    from pyspark.sql import functions as F

    expr = F.lit(len(edges) + 1)
    for i in range(len(edges) - 1, -1, -1):
        expr = F.when(age_seconds <= F.lit(edges[i]), F.lit(i + 1)).otherwise(expr)
    return expr.cast("int")


def vocab_sizes(buckets: HashBuckets, time_edges: list[int]) -> dict[str, int]:
    """Embedding-table sizes of every categorical model input."""
    return {
        "item": buckets.item_id, "shop": buckets.shop_id, "brand": buckets.brand_id,
        "category": buckets.category_id, "tag": buckets.tag, "query_token": buckets.query_token,
        "talent": buckets.talent_id, "talent_category": buckets.category_id,
        "behavior": N_BEHAVIOR, "scene": N_SCENE, "time_bucket": n_time_buckets(time_edges),
        "age": N_LEVEL, "gender": N_GENDER, "city": N_LEVEL,
    }
