"""Earlier days' statistics of an example's target, computed with Spark: what the whole population
did with a search query and with a talent before the example's day.

The DUPN heads read them from ``features/training_examples`` (``item_query_share``,
``talent_prior``) and the GBDT baseline from ``features/gbdt_examples``; both come from here, so the
two models see the same numbers:

* the **query's category**: of the search behaviour (``raw/events``, scene ``search``) whose query
  starts with the same token, the smoothed share that landed in the target item's category,
  ``(n + 0.01) / (all + 1)``. A hashed query token means nothing to a model until it has seen it
  land in categories; over all users and a week it says so directly;
* the **talent's** follow impressions and smoothed follow rate ``(follows + 0.5) / (impressions + 3)``,
  and the same of the **user's** own follow impressions (``raw/follows``).

Point in time: an example of day ``d`` sees the :data:`POPULARITY_DAYS` days before ``d``, never ``d``
itself, so no statistic counts an example's own label or anything after its instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from features import encoding as enc

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

POPULARITY_DAYS = 7
QUERY_SMOOTHING = (0.01, 1.0)     # share = (n + a) / (all + b)
FOLLOW_SMOOTHING = (0.5, 3.0)     # rate = (follows + a) / (impressions + b)
# talent_prior: one array per follow row, in this order
TALENT_PRIOR = ("talent_imps_prev", "talent_follow_rate_prev", "user_follow_imps_prev", "user_follow_rate_prev")


def first_query_token(query: "Column", buckets: int) -> "Column":
    """The hashed first whitespace token of a lower-cased, trimmed query (0 = no query), as the first
    entry of :func:`features.training_set.query_tokens`."""
    from pyspark.sql import functions as F

    tok = F.split(F.lower(F.trim(F.coalesce(query, F.lit("")))), r"\s+")[0]
    return F.when(F.length(tok) > 0, enc.hashed(tok, "query_token", buckets)).otherwise(F.lit(enc.PAD))


def prior_days(daily: "DataFrame", keys: Sequence[str], days: Sequence[str], sums: Sequence[str]) -> "DataFrame":
    """Sums of ``sums`` per ``keys`` over the POPULARITY_DAYS days before each day of ``days`` -> keys,
    ``dt`` (the example's day), sums. Keys with nothing in those days have no row."""
    from pyspark.sql import functions as F

    spark = daily.sparkSession
    targets = spark.createDataFrame([(d,) for d in days], "day string")
    joined = daily.join(F.broadcast(targets), (F.col("dt") < F.col("day"))
                        & (F.col("dt") >= F.date_format(F.date_sub(F.to_date("day"), POPULARITY_DAYS), "yyyy-MM-dd")))
    return joined.groupBy(*keys, "day").agg(*[F.sum(c).alias(c) for c in sums]).withColumnRenamed("day", "dt")


def search_categories(events: "DataFrame", items: "DataFrame", query_buckets: int) -> "DataFrame":
    """Search behaviour with a query -> qtok (hashed first token), cat (the item's hashed category,
    unknown when the item is not in ``raw/items``), dt.

    Args:
        events: valid ``raw/events`` rows.
        items: :func:`features.sequences.encode_items` output.
    """
    from pyspark.sql import functions as F

    searched = events.where(F.col("scene") == "search").select(
        "item_id", "dt", first_query_token(F.col("query"), query_buckets).alias("qtok"))
    return (searched.where(F.col("qtok") != enc.PAD)
            .join(F.broadcast(items.select("item_id", F.col("category").alias("cat"))), "item_id", "left")
            .select("qtok", F.coalesce("cat", F.lit(enc.UNKNOWN)).alias("cat"), "dt"))


def query_categories(searches: "DataFrame", days: Sequence[str]) -> tuple["DataFrame", "DataFrame"]:
    """:func:`search_categories` rows -> ((qtok, cat, dt, qn): that token's searches in that category
    over the earlier days, (qtok, dt, qall): all of that token's searches over them)."""
    from pyspark.sql import functions as F

    daily = searches.groupBy("qtok", "cat", "dt").agg(F.count(F.lit(1)).alias("qn"))
    per_cat = prior_days(daily, ["qtok", "cat"], days, ["qn"])
    return per_cat, per_cat.groupBy("qtok", "dt").agg(F.sum("qn").alias("qall"))


def query_share(qtok: "Column", qn: "Column", qall: "Column") -> "Column":
    """The smoothed share (float) of a query token's earlier searches in the target's category (the
    counts may be null: never seen); null without a query."""
    from pyspark.sql import functions as F

    a, b = QUERY_SMOOTHING
    share = (F.coalesce(qn, F.lit(0)) + a) / (F.coalesce(qall, F.lit(0)) + b)
    return F.when(qtok != enc.PAD, share).cast("float")


def follow_counts(follows: "DataFrame", days: Sequence[str], talent_buckets: int) \
        -> tuple["DataFrame", "DataFrame"]:
    """Valid ``raw/follows`` rows -> (talent, dt, timps, tfollows) with the talent hashed as in the
    training examples, and (user_id, dt, uimps, ufollows), over the earlier days of each of ``days``."""
    from pyspark.sql import functions as F

    fol = follows.select(enc.hashed(F.col("talent_id"), "talent_id", talent_buckets).alias("talent"),
                         "user_id", "followed", "dt")
    talent_daily = fol.groupBy("talent", "dt").agg(F.count(F.lit(1)).alias("timps"),
                                                   F.sum("followed").alias("tfollows"))
    user_daily = fol.groupBy("user_id", "dt").agg(F.count(F.lit(1)).alias("uimps"),
                                                  F.sum("followed").alias("ufollows"))
    return (prior_days(talent_daily, ["talent"], days, ["timps", "tfollows"]),
            prior_days(user_daily, ["user_id"], days, ["uimps", "ufollows"]))


def follow_rate(follows: "Column", imps: "Column") -> "Column":
    """The smoothed follow rate (float) of counts that may be null (never shown)."""
    from pyspark.sql import functions as F

    a, b = FOLLOW_SMOOTHING
    return ((F.coalesce(follows, F.lit(0)) + a) / (F.coalesce(imps, F.lit(0)) + b)).cast("float")


def talent_prior_columns() -> dict[str, "Column"]:
    """The :data:`TALENT_PRIOR` values from the columns of :func:`follow_counts` (joined, maybe null)."""
    from pyspark.sql import functions as F

    return {"talent_imps_prev": F.coalesce("timps", F.lit(0)).cast("float"),
            "talent_follow_rate_prev": follow_rate(F.col("tfollows"), F.col("timps")),
            "user_follow_imps_prev": F.coalesce("uimps", F.lit(0)).cast("float"),
            "user_follow_rate_prev": follow_rate(F.col("ufollows"), F.col("uimps"))}


__all__ = ["POPULARITY_DAYS", "TALENT_PRIOR", "first_query_token", "prior_days", "search_categories",
           "query_categories", "query_share", "follow_counts", "follow_rate", "talent_prior_columns"]
