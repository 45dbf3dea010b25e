"""Point-in-time multi-task training examples.

One row per example and task (``core.tables.TRAINING_EXAMPLES``):

* ``ctr`` — every impression (label ``clicked``; ``carted``/``bought`` ride along for ESMM).
* ``l2r`` — search impression lists (user, instant, query) with at least one click; graded
  relevance by the deepest behaviour (buy > cart > click > none), ``group_id`` per list.
* ``follow`` — talent follow impressions.
* ``ppp`` — purchasing-power labels, stamped at the end of their day (the label of ``dt``
  describes the user as of the end of ``dt``).

Each example carries its user's sequence as of its own ``event_time`` (strictly earlier
behaviour only, :func:`features.sequences.latest_n_before`). Sampling (negative rate,
positive up-sampling, cap per user and day) applies to the training split only; the
held-out split (the last ``holdout_days`` days) keeps the natural distribution so its
metrics are comparable with the oracle scores. Sampling is a deterministic hash of the
example and ``training_set.seed``.
"""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Sequence

from core import tables as t
from core.config import SequencesConfig, TaskSampling, TrainingSetConfig
from features import encoding as enc
from features.sequences import assemble, end_of_day, latest_n_before, pad

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

HASH_SPACE = 1_000_000


def holdout_days(days: Sequence[str], cfg: TrainingSetConfig) -> list[str]:
    """The held-out (evaluation) days of a date range: its last ``holdout_days`` days."""
    if len(days) <= cfg.holdout_days:
        from core.errors import PlatformError

        raise PlatformError(f"date range of {len(days)} day(s) leaves no training day with "
                            f"training_set.holdout_days={cfg.holdout_days}; widen --start/--end")
    return list(days[-cfg.holdout_days:])


def _uniform(seed: int, *cols: "Column") -> "Column":
    """A deterministic pseudo-uniform number in [0, 1) per row."""
    from pyspark.sql import functions as F

    return (F.pmod(F.xxhash64(F.lit(seed), *cols), F.lit(HASH_SPACE)) / HASH_SPACE).cast("double")


def query_tokens(query: "Column", cfg: SequencesConfig) -> "Column":
    """Lower-cased whitespace tokens of a query, hashed, padded to ``max_query_tokens`` (all 0 = none)."""
    from pyspark.sql import functions as F

    toks = F.filter(F.split(F.lower(F.trim(F.coalesce(query, F.lit("")))), r"\s+"), lambda x: F.length(x) > 0)
    hashed = F.transform(F.slice(toks, 1, cfg.max_query_tokens),
                         lambda x: enc.hashed(x, "query_token", cfg.hash_buckets.query_token))
    return pad(hashed, cfg.max_query_tokens, F.lit(enc.PAD))


def sample(df: "DataFrame", task: str, positive: "Column", s: TaskSampling, seed: int,
           holdout: Sequence[str]) -> "DataFrame":
    """Apply ``s`` to the training split: keep negatives with ``negative_rate``, repeat positives
    ``positive_upsample`` times, then cap rows per user and day. Adds ``split`` and ``copy``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    split = F.when(F.col("dt").isin(*holdout), F.lit("holdout")).otherwise(F.lit("train"))
    u = _uniform(seed, F.lit(task), F.col("user_id"), F.col("_ident"), F.col("event_time"))
    df = df.withColumn("split", split).withColumn("_u", u)
    train = F.col("split") == "train"
    df = df.where(~train | positive | (F.col("_u") < s.negative_rate))
    reps = F.when(train & positive, F.lit(s.positive_upsample)).otherwise(F.lit(1))
    df = df.withColumn("copy", F.explode(F.sequence(F.lit(0), reps - 1)))
    w = Window.partitionBy("user_id", "dt").orderBy("_u", "copy", "event_time", "_ident")
    return (df.withColumn("_rank", F.row_number().over(w))
            .where(~train | (F.col("_rank") <= s.cap_per_user_day)).drop("_rank", "_u"))


def _f32(value: float) -> "Column":
    from pyspark.sql import functions as F

    return F.lit(value).cast("float")


def _defaults(cfg: SequencesConfig, rank_dim: int) -> dict[str, "Column"]:
    """Values of the columns a task does not use."""
    from pyspark.sql import functions as F

    zeros_i = lambda n: F.array_repeat(F.lit(0), n)  # noqa: E731
    return {
        "group_id": F.lit(0).cast("bigint"), "query_tokens": zeros_i(cfg.max_query_tokens),
        "item_id": F.lit(None).cast("bigint"), "talent": F.lit(enc.PAD), "talent_category": F.lit(enc.PAD),
        "rank_features": F.array_repeat(F.lit(0.0).cast("float"), rank_dim),
        "label_click": _f32(0.0), "label_cart": _f32(0.0), "label_buy": _f32(0.0), "label_follow": _f32(0.0),
        "label_tier": F.lit(-1), "l2r_weight": _f32(1.0), "sample_weight": _f32(1.0),
    }


EXAMPLE_COLUMNS = ["example_id", "task", "task_id", "split", "user_id", "anchor_time", "dt", "group_id",
                   "query_tokens", "item_id", "talent", "talent_category", "rank_features", "label_click",
                   "label_cart", "label_buy", "label_follow", "label_tier", "l2r_weight", "sample_weight"]


def _finish(df: "DataFrame", task: str, cfg: SequencesConfig, rank_dim: int, seed: int) -> "DataFrame":
    from pyspark.sql import functions as F

    cols = {**_defaults(cfg, rank_dim), **{c: F.col(c) for c in df.columns}}
    cols["task"] = F.lit(task)
    cols["task_id"] = F.lit(t.TASK_IDS[task])
    cols["example_id"] = F.xxhash64(F.lit(seed), F.lit(task), F.col("user_id"), F.col("_ident"),
                                    F.col("event_time"), F.col("copy"))
    cols["anchor_time"] = F.col("event_time")
    return df.select(*[cols[c].alias(c) for c in EXAMPLE_COLUMNS])


def impression_examples(imp: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig, rank_dim: int,
                        holdout: Sequence[str], tasks: Sequence[str]) -> list["DataFrame"]:
    """``ctr`` and ``l2r`` examples of valid ``raw/impressions`` rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    gain = (F.when(F.col("bought") == 1, enc.L2R_WEIGHTS["buy"]).when(F.col("carted") == 1, enc.L2R_WEIGHTS["cart"])
            .when(F.col("clicked") == 1, enc.L2R_WEIGHTS["click"]).otherwise(enc.L2R_WEIGHTS["none"]))
    base = imp.select(
        "user_id", "event_time", "dt", F.col("item_id"),
        # an impression's identity: two lists may show the same item to a user at the same instant
        F.xxhash64("item_id", "scene", "query", "rank_features").alias("_ident"),
        query_tokens(F.col("query"), seq).alias("query_tokens"), "rank_features",
        F.col("clicked").cast("float").alias("label_click"), F.col("carted").cast("float").alias("label_cart"),
        F.col("bought").cast("float").alias("label_buy"), gain.cast("float").alias("l2r_weight"), "scene", "query")
    out = []
    if "ctr" in tasks:
        ctr = sample(base, "ctr", F.col("label_click") > 0, tsc.ctr, tsc.seed, holdout)
        out.append(_finish(ctr, "ctr", seq, rank_dim, tsc.seed))
    if "l2r" in tasks:
        lists = base.where((F.col("scene") == "search") & F.col("query").isNotNull())
        lists = lists.withColumn("group_id", F.xxhash64(F.col("user_id"), F.col("event_time"), F.col("query")))
        clicks = F.sum("label_click").over(Window.partitionBy("group_id"))
        lists = lists.withColumn("_clicks", clicks).where(F.col("_clicks") > 0).drop("_clicks")
        # for l2r the unit is the list: negative_rate is the share of lists kept, the cap counts
        # lists per user and day; whole lists are kept or dropped
        split = F.when(F.col("dt").isin(*holdout), F.lit("holdout")).otherwise(F.lit("train"))
        u = _uniform(tsc.seed, F.lit("l2r"), F.col("group_id"))
        lists = (lists.withColumn("split", split).withColumn("copy", F.lit(0)).withColumn("_u", u)
                 .where((F.col("split") == "holdout") | (F.col("_u") < tsc.l2r.negative_rate)))
        rank = F.dense_rank().over(Window.partitionBy("user_id", "dt").orderBy("_u", "group_id"))
        lists = lists.withColumn("_r", rank).where((F.col("split") == "holdout")
                                                   | (F.col("_r") <= tsc.l2r.cap_per_user_day)).drop("_r", "_u")
        out.append(_finish(lists, "l2r", seq, rank_dim, tsc.seed))
    return out


def follow_examples(fol: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig, rank_dim: int,
                    holdout: Sequence[str]) -> "DataFrame":
    from pyspark.sql import functions as F

    b = seq.hash_buckets
    base = fol.select("user_id", "event_time", "dt", F.col("talent_id").alias("_ident"),
                      enc.hashed(F.col("talent_id"), "talent_id", b.talent_id).alias("talent"),
                      enc.hashed(F.col("talent_category_id"), "talent_category_id", b.talent_category_id)
                      .alias("talent_category"), F.col("followed").cast("float").alias("label_follow"))
    sampled = sample(base, "follow", F.col("label_follow") > 0, tsc.follow, tsc.seed, holdout)
    return _finish(sampled, "follow", seq, rank_dim, tsc.seed)


def ppp_examples(labels: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig, rank_dim: int,
                 holdout: Sequence[str]) -> "DataFrame":
    """Labels stamped at the end of their day: the sequence includes the whole day ``dt``."""
    from pyspark.sql import functions as F

    stamp = F.to_timestamp(F.date_add(F.to_date("dt"), 1))
    base = labels.select("user_id", "dt", stamp.alias("event_time"), F.lit(0).cast("bigint").alias("_ident"),
                         (F.col("tier") - 1).alias("label_tier"))
    sampled = sample(base, "ppp", F.lit(True), tsc.ppp, tsc.seed, holdout)
    return _finish(sampled, "ppp", seq, rank_dim, tsc.seed)


def with_sequences(examples: "DataFrame", behaviour: "DataFrame", items: "DataFrame", users: "DataFrame",
                   seq: SequencesConfig) -> "DataFrame":
    """Attach each example's point-in-time sequence and its target item's encoding."""
    from pyspark.sql import functions as F

    anchors = examples.select("example_id", "user_id", "anchor_time")
    rows = latest_n_before(behaviour, anchors, "example_id", seq.max_len, seq.lookback_days)
    full = assemble(rows, ["example_id"], items, users, seq, anchors=examples)
    target = items.select("item_id", F.col("shop").alias("item_shop"), F.col("brand").alias("item_brand"),
                          F.col("category").alias("item_category"), F.col("tags").alias("item_tags"),
                          F.col("log_price").alias("item_log_price"))
    full = full.join(target, "item_id", "left")
    unknown_or_pad = F.when(F.col("item_id").isNull(), F.lit(enc.PAD)).otherwise(F.lit(enc.UNKNOWN))
    return full.select(
        "*",
        F.when(F.col("item_id").isNull(), F.lit(enc.PAD))
        .otherwise(enc.hashed(F.col("item_id"), "item_id", seq.hash_buckets.item_id)).alias("item"),
    ).select(
        *[c for c in full.columns if c not in ("item_shop", "item_brand", "item_category", "item_tags",
                                               "item_log_price")],
        "item",
        F.coalesce("item_shop", unknown_or_pad).alias("item_shop"),
        F.coalesce("item_brand", unknown_or_pad).alias("item_brand"),
        F.coalesce("item_category", unknown_or_pad).alias("item_category"),
        F.coalesce("item_tags", F.array_repeat(F.lit(enc.PAD), seq.max_tags)).alias("item_tags"),
        F.coalesce("item_log_price", F.lit(0.0).cast("float")).alias("item_log_price"),
    ).withColumn("event_time", F.col("anchor_time"))


def range_days(start: _dt.date, end: _dt.date) -> list[str]:
    return [(start + _dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def behaviour_days(start: _dt.date, end: _dt.date, lookback_days: int) -> list[str]:
    """``dt`` partitions of raw/events needed for examples of [start, end] (ppp anchors at end of day)."""
    return range_days(start - _dt.timedelta(days=lookback_days), end)


__all__ = ["end_of_day", "holdout_days", "impression_examples", "follow_examples", "ppp_examples",
           "with_sequences", "range_days", "behaviour_days", "sample", "query_tokens"]
