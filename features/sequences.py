"""Per-user behaviour sequences as of an instant, encoded for the model.

Two selections of "the latest N behaviours" share one encoder and one assembler, so the
nightly job and training see identically built sequences:

* :func:`latest_n_per_user` — serving snapshot (end of a day) for every active user: a
  ``row_number() <= N`` window, which Spark 3.5 plans as a window-group limit applied
  *before* the shuffle too, so a power user with millions of events contributes at most N
  rows per input partition and is never materialised whole.
* :func:`latest_n_before` — point in time for training examples: each example (anchor)
  gets the latest N behaviours strictly earlier than its ``anchor_time``. A running count
  over the user's time line gives each event its position and each anchor the number of
  events strictly before it; anchors then equi-join only the one or two blocks of N
  positions they need (``position // N``), so the join stays bounded by 2N rows per example
  whatever the history length.

Both order behaviours by ``(event_time, item_id, behavior, scene)`` so ties break the same way.

The incremental serving build keeps the selection of a day as a state (:func:`state_of`: per user the
sorted array of those four fields) and advances it by one day (:func:`advance_state`) instead of
re-selecting from the whole window; :func:`state_rows` turns it back into selected rows for
:func:`assemble`.
"""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Sequence

from core.config import SequencesConfig
from features import encoding as enc

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

BEHAVIOUR_COLUMNS = ["user_id", "item_id", "event_time", "behavior", "scene"]
DEEP_BEHAVIOURS = (enc.BEHAVIOR_INDEX["fav"], enc.BEHAVIOR_INDEX["cart"], enc.BEHAVIOR_INDEX["buy"])


def end_of_day(day: _dt.date) -> _dt.datetime:
    """The snapshot instant of a day: the next midnight UTC (behaviour strictly before it counts)."""
    return _dt.datetime.combine(day + _dt.timedelta(days=1), _dt.time())


def window_days(day: _dt.date, lookback_days: int) -> list[str]:
    """The ``dt`` partitions of the look-back window ending with ``day``."""
    return [(day - _dt.timedelta(days=i)).isoformat() for i in range(lookback_days - 1, -1, -1)]


def pad(arr: "Column", length: int, fill: "Column") -> "Column":
    """Right-pad an array column (at most ``length`` long) to exactly ``length``."""
    from pyspark.sql import functions as F

    return F.concat(arr, F.array_repeat(fill, F.lit(length) - F.size(arr)))


def encode_behaviour(events: "DataFrame") -> "DataFrame":
    """Valid ``raw/events`` rows -> user_id, item_id, event_time, behavior (int), scene (int)."""
    from pyspark.sql import functions as F

    return events.select("user_id", "item_id", "event_time",
                         enc.enum_index(F.col("behavior"), enc.BEHAVIOR_INDEX).alias("behavior"),
                         enc.enum_index(F.col("scene"), enc.SCENE_INDEX).alias("scene"))


def encode_items(items: "DataFrame", cfg: SequencesConfig) -> "DataFrame":
    """``raw/items`` -> item_id, shop, brand, category, tags (array of max_tags), log_price."""
    from pyspark.sql import functions as F

    b = cfg.hash_buckets
    tags = F.transform(F.slice(F.coalesce(F.col("tags"), F.array().cast("array<string>")), 1, cfg.max_tags),
                       lambda x: enc.hashed(x, "tag", b.tag))
    return items.select(
        "item_id",
        enc.hashed(F.col("shop_id"), "shop_id", b.shop_id).alias("shop"),
        enc.hashed(F.col("brand_id"), "brand_id", b.brand_id).alias("brand"),
        enc.hashed(F.col("category_id"), "category_id", b.category_id).alias("category"),
        pad(tags, cfg.max_tags, F.lit(enc.PAD)).alias("tags"),
        F.coalesce(F.log1p(F.col("price")), F.lit(0.0)).cast("float").alias("log_price"))


def encode_users(users: "DataFrame") -> "DataFrame":
    """``raw/users`` -> user_id, user_age, user_gender, user_city (indices)."""
    from pyspark.sql import functions as F

    return users.select("user_id", enc.level_index(F.col("age_level")).alias("user_age"),
                        enc.enum_index(F.col("gender"), enc.GENDER_INDEX).alias("user_gender"),
                        enc.level_index(F.col("city_level")).alias("user_city"))


def latest_n_per_user(behaviour: "DataFrame", n: int, as_of: _dt.datetime, lookback_days: int) -> "DataFrame":
    """The latest ``n`` behaviours of every user strictly before ``as_of`` within the look-back.

    Returns the behaviour columns plus ``anchor_time`` (= ``as_of``) for each selected row.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    start = as_of - _dt.timedelta(days=lookback_days)
    order = [F.col(c).desc() for c in ("event_time", "item_id", "behavior", "scene")]
    w = Window.partitionBy("user_id").orderBy(*order)
    return (behaviour.where((F.col("event_time") < F.lit(as_of)) & (F.col("event_time") >= F.lit(start)))
            .withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= n).drop("_rn")
            .withColumn("anchor_time", F.lit(as_of)))


def latest_n_before(behaviour: "DataFrame", anchors: "DataFrame", key: str, n: int,
                    lookback_days: int) -> "DataFrame":
    """For each anchor (``key``, user_id, anchor_time): its user's latest ``n`` behaviours with
    ``anchor_time - lookback <= event_time < anchor_time`` (point in time: an event at exactly
    ``anchor_time`` is excluded).

    Returns ``key``, anchor_time and all columns of ``behaviour`` (user_id, item_id, event_time,
    behavior, scene and any attributes joined to them), at most ``n`` rows per anchor.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = behaviour.columns
    ev = behaviour.select(*cols, F.lit(1).alias("_kind"), F.lit(None).cast(anchors.schema[key].dataType)
                          .alias(key), F.col("event_time").alias("_t"))
    an = anchors.select(*[F.col("user_id") if c == "user_id" else
                          F.lit(None).cast(behaviour.schema[c].dataType).alias(c) for c in cols],
                        F.lit(0).alias("_kind"), F.col(key), F.col("anchor_time").alias("_t"))
    # at equal instants anchors sort before events, so an anchor counts only strictly earlier events
    w = (Window.partitionBy("user_id").orderBy("_t", "_kind", "item_id", "behavior", "scene")
         .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    line = ev.unionByName(an).withColumn("_cnt", F.sum("_kind").over(w)).persist(StorageLevel.MEMORY_AND_DISK)
    events = (line.where(F.col("_kind") == 1).withColumn("_pos", F.col("_cnt") - 1)
              .withColumn("_block", F.floor(F.col("_pos") / n)).drop("_kind", key, "_t", "_cnt"))
    need = (line.where((F.col("_kind") == 0) & (F.col("_cnt") > 0))
            .select(key, "user_id", F.col("_t").alias("anchor_time"), F.col("_cnt").alias("_before"))
            .withColumn("_block", F.explode(F.array_distinct(F.array(
                F.floor(F.greatest(F.col("_before") - n, F.lit(0)) / n), F.floor((F.col("_before") - 1) / n))))))
    start = F.col("anchor_time") - F.expr(f"INTERVAL {int(lookback_days)} DAYS")
    return (need.join(events, ["user_id", "_block"])
            .where((F.col("_pos") >= F.col("_before") - n) & (F.col("_pos") < F.col("_before"))
                   & (F.col("event_time") >= start))
            .select(key, "anchor_time", *cols))


def with_items(behaviour: "DataFrame", items: "DataFrame") -> "DataFrame":
    """Attach the encoded item attributes (:func:`encode_items`) to behaviour rows.

    Rows of items missing from ``raw/items`` keep null attributes, which :func:`assemble`
    maps to unknown shop/brand/category, no tags and log price 0.
    """
    return behaviour.join(items, "item_id", "left")


def assemble(rows: "DataFrame", keys: Sequence[str], items: "DataFrame | None", users: "DataFrame",
             cfg: SequencesConfig, anchors: "DataFrame | None" = None) -> "DataFrame":
    """Selected behaviours -> one row per anchor with the encoded, padded sequence columns.

    Args:
        rows: ``keys``, user_id, anchor_time and the behaviour columns (from a selection above).
        items: :func:`encode_items` output, or None when ``rows`` already went through
            :func:`with_items`.
        users: :func:`encode_users` output (missing users get unknown profile indices).
        anchors: optional frame with ``keys``, user_id, anchor_time (and any other columns);
            anchors without behaviour get empty (all padding) sequences.

    Returns the anchor columns plus ``seq_len``, ``seq_*`` arrays (oldest to newest, padded to
    ``max_len``; ``seq_tags`` flattened to ``max_len * max_tags``), profile indices and ``user_dense``.
    """
    from pyspark.sql import functions as F

    L, K = cfg.max_len, cfg.max_tags
    b = cfg.hash_buckets
    joined = with_items(rows, items) if items is not None else rows
    elem = F.struct(
        F.col("event_time").alias("t"), F.col("item_id").alias("i"), F.col("behavior").alias("b"),
        F.col("scene").alias("s"),
        enc.hashed(F.col("item_id"), "item_id", b.item_id).alias("item"),
        F.coalesce("shop", F.lit(enc.UNKNOWN)).alias("shop"), F.coalesce("brand", F.lit(enc.UNKNOWN)).alias("brand"),
        F.coalesce("category", F.lit(enc.UNKNOWN)).alias("category"),
        F.coalesce("tags", F.array_repeat(F.lit(enc.PAD), K)).alias("tags"),
        F.coalesce("log_price", F.lit(0.0).cast("float")).alias("log_price"))
    group = [*keys, "user_id", "anchor_time"]
    grouped = joined.groupBy(*group).agg(F.array_sort(F.collect_list(elem)).alias("_s"))
    if anchors is not None:
        grouped = anchors.join(grouped, group, "left")
    s = F.coalesce(F.col("_s"), F.array().cast(grouped.schema["_s"].dataType))
    # the newest L: a selection never yields more, but the fixed length must hold whatever the input
    s = F.when(F.size(s) > L, F.slice(s, F.size(s) - L + 1, L)).otherwise(s)
    size = F.size(s)

    def field(name: str) -> "Column":
        return pad(F.transform(s, lambda x: x[name]), L, F.lit(enc.PAD))

    age = lambda x: F.col("anchor_time").cast("double") - x["t"].cast("double")  # noqa: E731
    denom = F.greatest(size, F.lit(1))
    dense = F.array(
        F.log1p(size.cast("double")),
        F.size(F.filter(s, lambda x: x["b"].isin(*DEEP_BEHAVIOURS))) / denom,
        F.log1p(F.size(F.array_distinct(F.transform(s, lambda x: x["category"]))).cast("double")),
        F.aggregate(s, F.lit(0.0).cast("double"), lambda acc, x: acc + x["log_price"]) / denom,
    ).cast("array<float>")
    out = grouped.select(
        *[c for c in grouped.columns if c != "_s"],
        size.alias("seq_len"),
        field("item").alias("seq_item"), field("shop").alias("seq_shop"), field("brand").alias("seq_brand"),
        field("category").alias("seq_category"),
        pad(F.flatten(F.transform(s, lambda x: x["tags"])), L * K, F.lit(enc.PAD)).alias("seq_tags"),
        field("b").alias("seq_behavior"), field("s").alias("seq_scene"),
        pad(F.transform(s, lambda x: enc.time_bucket(age(x), cfg.time_bucket_edges_s)), L, F.lit(enc.PAD))
        .alias("seq_time_bucket"),
        pad(F.transform(s, lambda x: x["log_price"]), L, F.lit(0.0).cast("float")).alias("seq_log_price"),
        dense.alias("user_dense"))
    profile = out.join(users, "user_id", "left")
    return profile.select(
        *[c for c in out.columns],
        *[F.coalesce(F.col(c), F.lit(enc.UNKNOWN)).alias(c) for c in ("user_age", "user_gender", "user_city")])


def serving_sequences(behaviour: "DataFrame", items: "DataFrame", users: "DataFrame", day: _dt.date,
                      cfg: SequencesConfig) -> "DataFrame":
    """``features/user_sequences`` rows of ``day``: every user active in the look-back window."""
    rows = latest_n_per_user(behaviour, cfg.max_len, end_of_day(day), cfg.lookback_days)
    return serving_from_rows(rows, items, users, day, cfg)


def serving_from_rows(rows: "DataFrame", items: "DataFrame", users: "DataFrame", day: _dt.date,
                      cfg: SequencesConfig) -> "DataFrame":
    """:func:`assemble` the selected behaviours of ``day`` (:func:`latest_n_per_user` or
    :func:`state_rows`) into ``features/user_sequences`` rows."""
    from pyspark.sql import functions as F

    seq = assemble(rows, [], items, users, cfg)
    return seq.withColumnRenamed("anchor_time", "snapshot_time").withColumn("dt", F.lit(day.isoformat()))


# ---------------------------------------------------------------- the incremental build's state
# One element of core.tables.USER_SEQUENCE_STATE's ``events``: the sort key of the selections above, in their
# order, so that sorting the structs ascending sorts the behaviours as latest_n_per_user does.
STATE_FIELDS = ("event_time", "item_id", "behavior", "scene")


def state_of(rows: "DataFrame") -> "DataFrame":
    """Selected behaviours (user_id and :data:`STATE_FIELDS`, e.g. :func:`latest_n_per_user`) -> the
    state: user_id, ``events`` (array of structs of :data:`STATE_FIELDS`, oldest first)."""
    from pyspark.sql import functions as F

    return rows.groupBy("user_id").agg(F.array_sort(F.collect_list(F.struct(*STATE_FIELDS))).alias("events"))


def advance_state(state: "DataFrame", behaviour: "DataFrame", as_of: _dt.datetime, n: int,
                  lookback_days: int) -> "DataFrame":
    """The state as of ``as_of`` from the state one day earlier and the behaviours of the day in between.

    Args:
        state: user_id, events (:func:`state_of`) as of ``as_of - 1 day``: every user's latest ``n``
            behaviours in the look-back window ending then.
        behaviour: the new behaviours (:func:`encode_behaviour` of the day's valid events).

    Returns user_id, events: per user the latest ``n`` behaviours with
    ``as_of - lookback_days <= event_time < as_of`` of the old state and the new behaviours, oldest
    first; users left with none are dropped. It equals :func:`state_of` of :func:`latest_n_per_user` on
    the whole window because the latest ``n`` of a window are among the latest ``n`` of the window one
    day earlier (the days they share) and the new day's behaviours.
    """
    from pyspark.sql import functions as F

    start, end = F.lit(as_of - _dt.timedelta(days=lookback_days)), F.lit(as_of)
    kept = F.filter("events", lambda x: (x["event_time"] >= start) & (x["event_time"] < end))
    old = state.select("user_id", kept.alias("_a")).where(F.size("_a") > 0)
    # the day's behaviours as one-element arrays: one shuffle (by user, combined map-side) merges both sides
    new = (behaviour.where((F.col("event_time") >= start) & (F.col("event_time") < end))
           .select("user_id", F.array(F.struct(*STATE_FIELDS)).cast(old.schema["_a"].dataType).alias("_a")))
    merged = old.unionByName(new).groupBy("user_id").agg(F.array_sort(F.flatten(F.collect_list("_a"))).alias("_s"))
    s = F.col("_s")
    return merged.select("user_id", F.when(F.size(s) > n, F.slice(s, F.size(s) - n + 1, n)).otherwise(s)
                         .alias("events"))


def state_rows(state: "DataFrame", as_of: _dt.datetime) -> "DataFrame":
    """The state as selected behaviour rows (what :func:`latest_n_per_user` returns): user_id, item_id,
    event_time, behavior, scene, anchor_time (= ``as_of``)."""
    from pyspark.sql import functions as F

    e = state.select("user_id", F.explode("events").alias("_e"))
    return e.select("user_id", *[F.col("_e")[c].alias(c) for c in BEHAVIOUR_COLUMNS[1:]],
                    F.lit(as_of).alias("anchor_time"))
