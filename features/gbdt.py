"""Hand-crafted point-in-time features for the gradient-boosted trees baseline (the model a
practitioner builds first), computed with Spark for the very examples of
``features/training_examples`` -> ``features/gbdt_examples`` (one row per example).

Every feature of an example stamped at ``t`` uses behaviour with ``event_time < t`` only (the
platform's point-in-time rule), and popularity from days strictly before the example's day:

* the user's activity in the **target's category** (the impression's item category, the talent's
  category): events in the last 1 h / 1 d / 3 d / 7 d / 30 d, their share of all the user's events
  in the same windows, exponentially decayed shares (half-lives 1 d and 3 d), fav/cart/buy counts,
  time since the last event and the last buy there, and how recent the category's latest event
  is among all events (1 = the very last one);
* the user's totals in the same windows, distinct categories, the last event's age;
* interactions with the exact item (count, time since);
* **price affinity**: prices relative to the category's mean log price; the user's mean relative
  price of clicks, favs, carts and buys (decayed too), and the target's distance to it;
* **popularity** from the 7 days before the example's day: the item's and the category's
  impressions and (smoothed) click and buy rates, the talent's follow rate, the user's own past
  follow rate;
* the query: the share of earlier search behaviour with the query's first token that landed in the
  target's category;
* the impression's ranking features, the profile (age, gender, city levels).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pyspark.sql import types as T

from core import tables as t
from core.tables import TableSpec
from features import encoding as enc
from features import priors
from features.training_set import impression_slots

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

DAY = 86_400.0
WINDOWS = {"1h": 3_600.0, "1d": DAY, "3d": 3 * DAY, "7d": 7 * DAY, "30d": 30 * DAY}
HALF_LIVES = {"1d": DAY, "3d": 3 * DAY}
POPULARITY_DAYS = priors.POPULARITY_DAYS
PRICE_BEHAVIOURS = {"click": enc.BEHAVIOR_INDEX["click"], "fav": enc.BEHAVIOR_INDEX["fav"],
                    "cart": enc.BEHAVIOR_INDEX["cart"], "buy": enc.BEHAVIOR_INDEX["buy"]}

CATEGORY_FEATURES = ([f"cat_n_{w}" for w in WINDOWS] + [f"cat_share_{w}" for w in WINDOWS]
                     + [f"cat_decayed_share_{h}" for h in HALF_LIVES]
                     + ["cat_fav_7d", "cat_cart_7d", "cat_buy_7d", "cat_buy_30d", "cat_last_age_h",
                        "cat_last_buy_age_h", "cat_recency_rank", "cat_mean_rel_price"])
USER_FEATURES = ([f"user_n_{w}" for w in WINDOWS]
                 + ["user_distinct_categories", "user_last_age_h", "user_age_level", "user_gender", "user_city_level"]
                 + [f"user_rel_price_{b}" for b in PRICE_BEHAVIOURS] + [f"user_n_{b}" for b in PRICE_BEHAVIOURS]
                 + ["user_rel_price_decayed_deep", "user_rel_price_buy_max", "user_rel_price_buy_min",
                    "user_log_price_mean"])
ITEM_FEATURES = (["target_category", "item_n_30d", "item_last_age_h", "target_rel_price", "target_price_gap_buy",
                  "target_price_gap_deep", "item_imps_prev", "item_ctr_prev", "item_cvr_prev", "cat_imps_prev",
                  "cat_ctr_prev", "item_events_prev", "query_category_share", "has_query"]
                 + [f"rank_{i}" for i in range(64)])
FOLLOW_FEATURES = ["target_category", "talent_imps_prev", "talent_follow_rate_prev", "user_follow_imps_prev",
                   "user_follow_rate_prev"]


# The hand-crafted summaries of the user's history, in groups. DUPN's heads read the rest of the GBDT's columns
# (the target's own columns, the ranking features, the query's and the talent's priors, the profile) in other
# forms and must learn these from the sequence: the comparison's feature ladder adds the groups back one at a
# time (benchmarks/bench_comparison.py), and the hybrid model's heads read them all (features/hybrid.py).
WINDOWED = tuple(f"cat_{k}_{w}" for k in ("n", "share") for w in ("1h", "1d", "3d", "7d", "30d")) \
    + ("cat_decayed_share_1d", "cat_decayed_share_3d")
HISTORY_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("activity", "the user's events in the target's category (counts and shares over 1 h to 30 d, decayed shares)",
     WINDOWED),
    ("recency", "how recent the latest of them is (cat_last_age_h, cat_recency_rank)",
     ("cat_last_age_h", "cat_recency_rank")),
    ("kinds", "the favourites, carts and purchases in the target's category (7 d, 30 d, the last purchase's age)",
     ("cat_fav_7d", "cat_cart_7d", "cat_buy_7d", "cat_buy_30d", "cat_last_buy_age_h")),
    ("price", "the user's prices by behaviour type and the target's gap to them",
     ("cat_mean_rel_price", "user_rel_price_click", "user_rel_price_fav", "user_rel_price_cart", "user_rel_price_buy",
      "user_rel_price_decayed_deep", "user_rel_price_buy_max", "user_rel_price_buy_min", "user_log_price_mean",
      "target_price_gap_buy", "target_price_gap_deep")),
    ("user", "the user's totals (events over 1 h to 30 d and by type, distinct categories, the last event's age)",
     ("user_n_1h", "user_n_1d", "user_n_3d", "user_n_7d", "user_n_30d", "user_n_click", "user_n_fav", "user_n_cart",
      "user_n_buy", "user_distinct_categories", "user_last_age_h")),
    ("popularity", "the item's and the category's impressions and rates of the days before",
     ("item_imps_prev", "item_ctr_prev", "item_cvr_prev", "cat_imps_prev", "cat_ctr_prev", "item_events_prev")),
)
# every summary of the groups, in order: the side inputs of the hybrid model
SIDE_COLUMNS = tuple(f for _, _, group in HISTORY_GROUPS for f in group)


def feature_columns(rank_dim: int) -> list[str]:
    """Every feature column of ``features/gbdt_examples`` (rank features up to ``rank_dim``)."""
    items = [c for c in ITEM_FEATURES if not c.startswith("rank_")] + [f"rank_{i}" for i in range(rank_dim)]
    seen: list[str] = []
    for c in CATEGORY_FEATURES + USER_FEATURES + items + FOLLOW_FEATURES:
        if c not in seen:
            seen.append(c)
    return seen


def task_features(task: str, rank_dim: int) -> list[str]:
    """The features the GBDT of one task reads."""
    items = [c for c in ITEM_FEATURES if not c.startswith("rank_")] + [f"rank_{i}" for i in range(rank_dim)]
    if task in ("ctr", "cvr", "ctcvr", "l2r"):
        return CATEGORY_FEATURES + USER_FEATURES + items
    if task == "follow":
        return CATEGORY_FEATURES + USER_FEATURES + FOLLOW_FEATURES
    return list(USER_FEATURES)


def gbdt_spec(rank_dim: int) -> TableSpec:
    """``features/gbdt_examples``: keys, labels and the float features."""
    def f(name: str, dtype: T.DataType, nullable: bool = False) -> T.StructField:
        return T.StructField(name, dtype, nullable)

    keys = [f("example_id", T.LongType()), f("task", T.StringType()), f("split", T.StringType()),
            f("user_id", T.LongType()), f("list_id", T.LongType()), f("event_time", T.TimestampType()),
            f("l2r", T.IntegerType()), f("label_click", T.FloatType()), f("label_buy", T.FloatType()),
            f("l2r_gain", T.FloatType()), f("ctr_weight", T.FloatType()), f("label_follow", T.FloatType()),
            f("follow_weight", T.FloatType()), f("label_tier", T.IntegerType()), f("ppp_user", T.IntegerType())]
    feats = [f(c, T.FloatType(), True) for c in feature_columns(rank_dim)]
    return TableSpec("features/gbdt_examples", T.StructType(keys + feats + [f("dt", T.StringType())]), ("dt",),
                     "hand-crafted point-in-time features of every training example (the GBDT baseline)")


# ---------------------------------------------------------------------- building blocks
def encoded_events(events: "DataFrame", items: "DataFrame", cfg_buckets_query: int) -> "DataFrame":
    """Valid ``raw/events`` -> user_id, event_time, t (seconds), beh, cat (hashed category index), item
    (hashed item index), rel_price (log price minus its category's mean; null when unknown), log_price,
    search query's first token (hashed, 0 = none)."""
    from pyspark.sql import functions as F

    cat_mean = (items.where(F.col("category").isNotNull() & (F.col("log_price") > 0))
                .groupBy("category").agg(F.avg("log_price").alias("_cat_mean")))
    it = items.join(F.broadcast(cat_mean), "category", "left").select(
        "item_id", F.col("category").alias("cat"), "log_price",
        F.when(F.col("log_price") > 0, F.col("log_price") - F.col("_cat_mean")).alias("rel_price"))
    return events.join(F.broadcast(it), "item_id", "left").select(
        "user_id", "event_time", F.col("event_time").cast("double").alias("t"),
        enc.enum_index(F.col("behavior"), enc.BEHAVIOR_INDEX).alias("beh"),
        F.coalesce("cat", F.lit(enc.UNKNOWN)).alias("cat"), "item_id",
        F.when(F.col("log_price") > 0, F.col("log_price")).alias("log_price"), "rel_price",
        F.when(F.col("scene") == "search", priors.first_query_token(F.col("query"), cfg_buckets_query))
        .otherwise(F.lit(enc.PAD)).alias("qtok"), "dt")


def _window_sums(age: "Column", prefix: str) -> list["Column"]:
    from pyspark.sql import functions as F

    return [F.sum(F.when(age <= F.lit(w), 1).otherwise(0)).cast("float").alias(f"{prefix}_n_{k}")
            for k, w in WINDOWS.items()]


def user_aggregates(anchors: "DataFrame", ev: "DataFrame") -> tuple["DataFrame", "DataFrame", "DataFrame"]:
    """Per anchor (group_id, user_id, anchor t): (per-category aggregates, per-anchor totals,
    per-item aggregates) of the user's events in the 30 days before t."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    a = anchors.select("group_id", "user_id", F.col("event_time").cast("double").alias("anchor_t"))
    joined = (a.join(ev.drop("dt", "event_time"), "user_id")
              .where((F.col("t") < F.col("anchor_t")) & (F.col("t") >= F.col("anchor_t") - F.lit(WINDOWS["30d"])))
              .withColumn("age", F.col("anchor_t") - F.col("t")))
    rn = Window.partitionBy("group_id").orderBy(F.col("t").desc(), F.col("item_id"))
    joined = joined.withColumn("_rn", F.row_number().over(rn)).persist(StorageLevel.MEMORY_AND_DISK)
    age = F.col("age")
    deep = F.col("beh").isin(PRICE_BEHAVIOURS["fav"], PRICE_BEHAVIOURS["cart"], PRICE_BEHAVIOURS["buy"])
    buy = F.col("beh") == PRICE_BEHAVIOURS["buy"]
    per_cat = joined.groupBy("group_id", "cat").agg(
        *_window_sums(age, "cat"),
        *[F.sum(F.exp(-age / F.lit(h))).alias(f"_cat_dec_{k}") for k, h in HALF_LIVES.items()],
        F.sum(F.when((F.col("beh") == PRICE_BEHAVIOURS["fav"]) & (age <= 7 * DAY), 1).otherwise(0))
        .cast("float").alias("cat_fav_7d"),
        F.sum(F.when((F.col("beh") == PRICE_BEHAVIOURS["cart"]) & (age <= 7 * DAY), 1).otherwise(0))
        .cast("float").alias("cat_cart_7d"),
        F.sum(F.when(buy & (age <= 7 * DAY), 1).otherwise(0)).cast("float").alias("cat_buy_7d"),
        F.sum(F.when(buy, 1).otherwise(0)).cast("float").alias("cat_buy_30d"),
        (F.min(age) / 3600.0).cast("float").alias("cat_last_age_h"),
        (F.min(F.when(buy, age)) / 3600.0).cast("float").alias("cat_last_buy_age_h"),
        F.min("_rn").cast("float").alias("cat_recency_rank"),
        F.avg("rel_price").cast("float").alias("cat_mean_rel_price"))
    price = [F.avg(F.when(F.col("beh") == b, F.col("rel_price"))).cast("float").alias(f"user_rel_price_{name}")
             for name, b in PRICE_BEHAVIOURS.items()]
    counts = [F.sum(F.when(F.col("beh") == b, 1).otherwise(0)).cast("float").alias(f"user_n_{name}")
              for name, b in PRICE_BEHAVIOURS.items()]
    w_deep = F.when(deep & F.col("rel_price").isNotNull(), F.exp(-age / F.lit(3 * DAY)))
    totals = joined.groupBy("group_id").agg(
        *_window_sums(age, "user"),
        *[F.sum(F.exp(-age / F.lit(h))).alias(f"_user_dec_{k}") for k, h in HALF_LIVES.items()],
        F.countDistinct("cat").cast("float").alias("user_distinct_categories"),
        (F.min(age) / 3600.0).cast("float").alias("user_last_age_h"),
        *price, *counts,
        (F.sum(w_deep * F.col("rel_price")) / F.sum(w_deep)).cast("float").alias("user_rel_price_decayed_deep"),
        F.max(F.when(buy, F.col("rel_price"))).cast("float").alias("user_rel_price_buy_max"),
        F.min(F.when(buy, F.col("rel_price"))).cast("float").alias("user_rel_price_buy_min"),
        F.avg("log_price").cast("float").alias("user_log_price_mean"))
    per_item = joined.groupBy("group_id", "item_id").agg(
        F.count(F.lit(1)).cast("float").alias("item_n_30d"),
        (F.min(age) / 3600.0).cast("float").alias("item_last_age_h"))
    return per_cat, totals, per_item


def popularity(impressions: "DataFrame", events: "DataFrame", follows: "DataFrame | None",
               items: "DataFrame", days: Sequence[str], item_buckets: int, talent_buckets: int) \
        -> dict[str, "DataFrame"]:
    """Prior-days popularity tables keyed by hashed ids and ``dt`` (the example's day)."""
    from pyspark.sql import functions as F

    cat_of = items.select("item_id", F.coalesce("category", F.lit(enc.UNKNOWN)).alias("cat"))
    imp = impressions.join(F.broadcast(cat_of), "item_id", "left").select(
        enc.hashed(F.col("item_id"), "item_id", item_buckets).alias("item"),
        F.coalesce("cat", F.lit(enc.UNKNOWN)).alias("cat"), "clicked", "bought", "dt")
    item_daily = imp.groupBy("item", "dt").agg(F.count(F.lit(1)).alias("imps"), F.sum("clicked").alias("clicks"),
                                               F.sum("bought").alias("buys"))
    cat_daily = imp.groupBy("cat", "dt").agg(F.count(F.lit(1)).alias("cimps"), F.sum("clicked").alias("cclicks"))
    ev_daily = (events.select(enc.hashed(F.col("item_id"), "item_id", item_buckets).alias("item"), "dt")
                .groupBy("item", "dt").agg(F.count(F.lit(1)).alias("events")))
    out = {"item": priors.prior_days(item_daily, ["item"], days, ["imps", "clicks", "buys"]),
           "cat": priors.prior_days(cat_daily, ["cat"], days, ["cimps", "cclicks"]),
           "item_events": priors.prior_days(ev_daily, ["item"], days, ["events"])}
    out["query"], out["query_all"] = priors.query_categories(
        events.where(F.col("qtok") != enc.PAD).select("qtok", "cat", "dt"), days)
    if follows is not None:
        out["talent"], out["user_follow"] = priors.follow_counts(follows, days, talent_buckets)
    return out


def gbdt_examples(examples: "DataFrame", events: "DataFrame", items_encoded: "DataFrame", impressions: "DataFrame",
                  follows: "DataFrame | None", users: "DataFrame", days: Sequence[str], rank_dim: int, max_tags: int,
                  buckets: "object") -> "DataFrame":
    """Rows of ``features/gbdt_examples`` for the example groups ``examples`` (training_examples rows).

    Args:
        events: :func:`encoded_events` output over the look-back of the examples.
        items_encoded: :func:`features.sequences.encode_items` output.
        impressions, follows: valid ``raw/impressions`` / ``raw/follows`` rows (popularity).
        users: :func:`features.sequences.encode_users` output.
        days: the examples' days.
        buckets: ``sequences.hash_buckets``.
    """
    from pyspark.sql import functions as F

    anchors = examples.select("group_id", "user_id", "event_time")
    per_cat, totals, per_item = user_aggregates(anchors, events)
    pop = popularity(impressions, events, follows, items_encoded, days,
                     buckets.item_id, buckets.talent_id)  # type: ignore[attr-defined]
    spec = gbdt_spec(rank_dim)
    cols = feature_columns(rank_dim)

    def shares(df: "DataFrame") -> "DataFrame":
        out = df
        for k in WINDOWS:
            out = out.withColumn(f"cat_share_{k}", (F.coalesce(f"cat_n_{k}", F.lit(0.0))
                                                    / F.greatest(F.col(f"user_n_{k}"), F.lit(1.0))).cast("float"))
        for k in HALF_LIVES:
            out = out.withColumn(f"cat_decayed_share_{k}", (F.coalesce(f"_cat_dec_{k}", F.lit(0.0))
                                                            / F.greatest(F.col(f"_user_dec_{k}"), F.lit(1e-9)))
                                 .cast("float"))
        for c in [f"cat_n_{k}" for k in WINDOWS] + ["cat_fav_7d", "cat_cart_7d", "cat_buy_7d", "cat_buy_30d"]:
            out = out.withColumn(c, F.coalesce(c, F.lit(0.0)).cast("float"))
        for c in [f"user_n_{k}" for k in WINDOWS] + [f"user_n_{b}" for b in PRICE_BEHAVIOURS] \
                + ["user_distinct_categories"]:
            out = out.withColumn(c, F.coalesce(c, F.lit(0.0)).cast("float"))
        return out

    prof = users.select("user_id", F.col("user_age").cast("float").alias("user_age_level"),
                        F.col("user_gender").cast("float").alias("user_gender"),
                        F.col("user_city").cast("float").alias("user_city_level"))
    # ---- impression slots (ctr, l2r)
    slots = impression_slots(examples, rank_dim, max_tags).join(
        examples.select("group_id", F.col("query_tokens")[0].alias("qtok")), "group_id")
    slots = slots.withColumn("cat", F.col("item_category"))
    rel = items_encoded.select(F.col("category").alias("cat"), "log_price").where(F.col("log_price") > 0) \
        .groupBy("cat").agg(F.avg("log_price").alias("_cat_mean"))
    # per_item is keyed by raw item ids, slots by hashed ones
    imp = slots.join(per_cat, ["group_id", "cat"], "left").join(totals, "group_id", "left")
    item_hashed = per_item.select("group_id", enc.hashed(F.col("item_id"), "item_id", buckets.item_id)  # type: ignore
                                  .alias("item"), "item_n_30d", "item_last_age_h")
    item_hashed = item_hashed.groupBy("group_id", "item").agg(F.sum("item_n_30d").alias("item_n_30d"),
                                                              F.min("item_last_age_h").alias("item_last_age_h"))
    imp = imp.join(item_hashed, ["group_id", "item"], "left").join(F.broadcast(rel), "cat", "left")
    p_item, p_cat, p_ev, p_q, q_tot = pop["item"], pop["cat"], pop["item_events"], pop["query"], pop["query_all"]
    imp = (imp.join(p_item, ["item", "dt"], "left").join(p_cat, ["cat", "dt"], "left")
           .join(p_ev, ["item", "dt"], "left").join(p_q, ["qtok", "cat", "dt"], "left")
           .join(q_tot, ["qtok", "dt"], "left"))
    rel_target = F.col("item_log_price") - F.col("_cat_mean")
    imp = shares(imp).select(
        "*", F.col("cat").cast("float").alias("target_category"),
        F.coalesce("item_n_30d", F.lit(0.0)).cast("float").alias("_item_n"),
        F.when(F.col("item_log_price") > 0, rel_target).cast("float").alias("target_rel_price"),
        F.coalesce("imps", F.lit(0)).cast("float").alias("item_imps_prev"),
        ((F.coalesce("clicks", F.lit(0)) + 1.0) / (F.coalesce("imps", F.lit(0)) + 25.0)).cast("float")
        .alias("item_ctr_prev"),
        ((F.coalesce("buys", F.lit(0)) + 0.1) / (F.coalesce("clicks", F.lit(0)) + 2.0)).cast("float")
        .alias("item_cvr_prev"),
        F.coalesce("cimps", F.lit(0)).cast("float").alias("cat_imps_prev"),
        ((F.coalesce("cclicks", F.lit(0)) + 1.0) / (F.coalesce("cimps", F.lit(0)) + 25.0)).cast("float")
        .alias("cat_ctr_prev"),
        F.coalesce("events", F.lit(0)).cast("float").alias("item_events_prev"),
        priors.query_share(F.col("qtok"), F.col("qn"), F.col("qall")).alias("query_category_share"),
        (F.col("qtok") > 0).cast("float").alias("has_query"),
        *[F.col("rank_features")[i].cast("float").alias(f"rank_{i}") for i in range(rank_dim)])
    imp = (imp.drop("item_n_30d").withColumnRenamed("_item_n", "item_n_30d")
           .withColumn("target_price_gap_buy", (F.col("target_rel_price") - F.col("user_rel_price_buy")).cast("float"))
           .withColumn("target_price_gap_deep",
                       (F.col("target_rel_price") - F.col("user_rel_price_decayed_deep")).cast("float"))
           .join(prof, "user_id", "left"))
    imp = imp.select(F.col("example_id"), F.lit("impressions").alias("task"), "split", "user_id", "list_id",
                     "event_time", "l2r", "label_click", "label_buy", "l2r_gain", "ctr_weight",
                     F.lit(0.0).cast("float").alias("label_follow"), F.lit(0.0).cast("float").alias("follow_weight"),
                     F.lit(-1).alias("label_tier"), F.lit(0).alias("ppp_user"),
                     *[(F.col(c) if c in imp.columns else F.lit(None)).cast("float").alias(c) for c in cols], "dt")
    parts = [imp]
    # ---- follow rows
    fol = examples.where(F.col("kind") == "follow").select(
        "group_id", "user_id", "event_time", "dt", "split", "label_follow", "follow_weight",
        F.col("talent_category").alias("cat"), "talent", "list_id")
    if "talent" in pop:
        fol = fol.join(pop["talent"], ["talent", "dt"], "left").join(pop["user_follow"], ["user_id", "dt"], "left")
    else:
        fol = fol.select("*", *[F.lit(None).cast("long").alias(c)
                                for c in ("timps", "tfollows", "uimps", "ufollows")])
    fol = shares(fol.join(per_cat, ["group_id", "cat"], "left").join(totals, "group_id", "left")).select(
        "*", F.col("cat").cast("float").alias("target_category"),
        *[c.alias(name) for name, c in priors.talent_prior_columns().items()]).join(prof, "user_id", "left")
    parts.append(_rows(fol, "follow", cols, {"label_follow": F.col("label_follow"),
                                             "follow_weight": F.col("follow_weight")}))
    # ---- purchasing-power rows
    ppp = examples.where(F.col("kind") == "ppp").select("group_id", "user_id", "event_time", "dt", "split",
                                                        "label_tier", "ppp_user", "list_id")
    no_category = [f"cat_n_{k}" for k in WINDOWS] + [f"_cat_dec_{k}" for k in HALF_LIVES] + \
        ["cat_fav_7d", "cat_cart_7d", "cat_buy_7d", "cat_buy_30d"]
    ppp = ppp.join(totals, "group_id", "left").select("*", *[F.lit(None).cast("float").alias(c) for c in no_category])
    ppp = shares(ppp).join(prof, "user_id", "left")
    parts.append(_rows(ppp, "ppp", cols, {"label_tier": F.col("label_tier"), "ppp_user": F.col("ppp_user")}))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return spec.conform(out)


def _rows(df: "DataFrame", task: str, cols: Sequence[str], labels: dict[str, "Column"]) -> "DataFrame":
    """Rows of one example kind in the table's key, label and feature columns (absent labels: neutral values)."""
    from pyspark.sql import functions as F

    zero = F.lit(0.0).cast("float")
    defaults: dict[str, "Column"] = {"l2r": F.lit(0), "label_click": zero, "label_buy": zero, "l2r_gain": zero,
                                     "ctr_weight": zero, "label_follow": zero, "follow_weight": zero,
                                     "label_tier": F.lit(-1), "ppp_user": F.lit(0)}
    defaults.update(labels)
    return df.select(F.col("group_id").alias("example_id"), F.lit(task).alias("task"), "split", "user_id", "list_id",
                     "event_time", *[v.alias(k) for k, v in defaults.items()],
                     *[(F.col(c) if c in df.columns else F.lit(None)).cast("float").alias(c) for c in cols], "dt")


__all__ = ["HISTORY_GROUPS", "SIDE_COLUMNS", "WINDOWED", "gbdt_spec", "gbdt_examples", "encoded_events",
           "feature_columns", "task_features", "t"]
