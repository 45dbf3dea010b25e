"""Point-in-time multi-task training examples, one row per **example group**.

Examples that share a user and an instant share that user's behaviour sequence. A row of
``core.tables.TRAINING_EXAMPLES`` holds the sequence once and every example scored from it
(the paper's model split, used at training time too):

* ``impressions`` rows — one impression list (user, instant, scene, query) of ``raw/impressions``:
  up to ``training_set.group_size`` items in slot arrays, each a ``ctr`` example (label
  ``clicked``; ``carted``/``bought`` ride along for ESMM, ``ctr_weight`` is its sampling
  weight). Search lists with at least one click are also an ``l2r`` list (``l2r = 1``; graded
  gain by the deepest behaviour, buy > cart > click > none). Longer lists take several rows
  (``list_id`` ties them together).
* ``follow`` rows — one talent follow impression.
* ``ppp`` rows — one purchasing-power label, stamped at the end of its day (the label of ``dt``
  describes the user as of the end of ``dt``), with the user's label group ``ppp_user``.

Each row carries its user's sequence as of its own ``event_time`` (strictly earlier behaviour
only, :func:`features.sequences.latest_n_before`). Splits follow the evaluation protocol
(:mod:`core.protocol`): training / validation / test days, and purchasing-power labels of
held-out users never in the training split. Sampling applies to the training split only, as a
deterministic hash of the example and ``training_set.seed``; validation and test keep the
natural distribution so their metrics compare with the oracle's.
"""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Sequence

from core import protocol as pr
from core.protocol import range_days
from core import tables as t
from core.config import SequencesConfig, TaskSampling, TrainingSetConfig
from features import encoding as enc
from features import priors
from features.sequences import assemble, end_of_day, latest_n_before, pad

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

HASH_SPACE = 1_000_000


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


def _f32(value: float) -> "Column":
    from pyspark.sql import functions as F

    return F.lit(value).cast("float")


def cap_groups(df: "DataFrame", cap: int, seed: int, salt: str) -> "DataFrame":
    """Keep at most ``cap`` rows per user and day in the training split (a hash decides which)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("user_id", "dt").orderBy("_cap_u", "group_id")
    ranked = df.withColumn("_cap_u", _uniform(seed, F.lit(salt), F.col("group_id")))
    return (ranked.withColumn("_cap_r", F.row_number().over(w))
            .where((F.col("split") != pr.TRAIN) | (F.col("_cap_r") <= F.lit(cap))).drop("_cap_r", "_cap_u"))


def _defaults(cfg: SequencesConfig, rank_dim: int, group_size: int) -> dict[str, "Column"]:
    """Values of the columns a row kind does not use (empty slots, no talent, no tier)."""
    from pyspark.sql import functions as F

    G, K = group_size, cfg.max_tags

    def ints(n: int) -> "Column":
        return F.array_repeat(F.lit(enc.PAD), n)

    def floats(n: int) -> "Column":
        return F.array_repeat(_f32(0.0), n)

    return {
        "list_id": F.lit(0).cast("bigint"), "query_tokens": ints(cfg.max_query_tokens), "n_items": F.lit(0),
        "example_id": F.array_repeat(F.lit(0).cast("bigint"), G), "item": ints(G), "item_shop": ints(G),
        "item_brand": ints(G), "item_category": ints(G), "item_tags": ints(G * K), "item_log_price": floats(G),
        "item_query_share": floats(G), "rank_features": floats(G * rank_dim), "label_click": floats(G),
        "label_cart": floats(G), "label_buy": floats(G), "ctr_weight": floats(G), "l2r": F.lit(0),
        "l2r_gain": floats(G), "talent": F.lit(enc.PAD), "talent_category": F.lit(enc.PAD),
        "talent_prior": floats(len(priors.TALENT_PRIOR)), "label_follow": _f32(0.0),
        "follow_weight": _f32(0.0), "label_tier": F.lit(-1), "ppp_user": F.lit(pr.PPP_TRAIN_USER),
    }


EXAMPLE_COLUMNS = ["group_id", "list_id", "kind", "kind_id", "split", "user_id", "anchor_time", "dt",
                   "query_tokens", "n_items", *t.SLOT_COLUMNS, "l2r", "talent", "talent_category", "talent_prior",
                   "label_follow", "follow_weight", "label_tier", "ppp_user"]


def _finish(df: "DataFrame", kind: str, cfg: SequencesConfig, rank_dim: int, group_size: int) -> "DataFrame":
    from pyspark.sql import functions as F

    cols = {**_defaults(cfg, rank_dim, group_size), **{c: F.col(c) for c in df.columns}}
    cols["kind"] = F.lit(kind)
    cols["kind_id"] = F.lit(t.KIND_IDS[kind])
    cols["anchor_time"] = F.col("event_time")
    return df.select(*[cols[c].alias(c) for c in EXAMPLE_COLUMNS])


def impression_groups(imp: "DataFrame", items: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig,
                      rank_dim: int, days: pr.DaySplit, tasks: Sequence[str],
                      searches: "DataFrame") -> "DataFrame":
    """``impressions`` rows of valid ``raw/impressions`` rows.

    Args:
        imp: valid impressions.
        items: :func:`features.sequences.encode_items` output (target item attributes).
        tasks: the enabled tasks (``ctr`` and/or ``l2r``).
        searches: :func:`features.priors.search_categories` of the behaviour before the examples' days
            (``item_query_share``).

    CTR sampling (training split): negatives are kept with ``ctr.negative_rate``, positives get
    weight ``ctr.positive_upsample``; a dropped negative keeps its slot (weight 0) only inside an
    L2R list. L2R lists (search, query, >= 1 click) are kept with share ``l2r.negative_rate``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    G, K, b = tsc.group_size, seq.max_tags, seq.hash_buckets
    split = pr.day_split_column(F.col("dt"), days)
    gain = (F.when(F.col("bought") == 1, enc.L2R_WEIGHTS["buy"]).when(F.col("carted") == 1, enc.L2R_WEIGHTS["cart"])
            .when(F.col("clicked") == 1, enc.L2R_WEIGHTS["click"]).otherwise(enc.L2R_WEIGHTS["none"]))
    base = imp.select(
        "user_id", "event_time", "dt", "item_id", "scene", "query", "rank_features", "clicked", "carted", "bought",
        # an impression's identity: two lists may show the same item to a user at the same instant
        F.xxhash64("item_id", "scene", "query", "rank_features").alias("_ident"),
        F.xxhash64(F.lit("list"), "user_id", "event_time", F.coalesce("scene", F.lit("")),
                   F.coalesce("query", F.lit(""))).alias("list_id"),
        gain.cast("float").alias("_gain")).withColumn("split", split)
    train = F.col("split") == pr.TRAIN
    s_ctr = tsc.ctr
    u = _uniform(tsc.seed, F.lit("ctr"), F.col("user_id"), F.col("_ident"), F.col("event_time"))
    ctr_on = "ctr" in tasks
    weight = (F.when(~F.lit(ctr_on), F.lit(0.0))
              .when(~train, F.lit(1.0))
              .when(F.col("clicked") == 1, F.lit(float(s_ctr.positive_upsample)))
              .when(u < F.lit(s_ctr.negative_rate), F.lit(1.0)).otherwise(F.lit(0.0)))
    base = base.withColumn("_w", weight.cast("float"))
    lw = Window.partitionBy("list_id")
    searched = (F.col("scene") == "search") & F.col("query").isNotNull() if tsc.l2r_lists == "search" else F.lit(True)
    is_list = searched & (F.sum("clicked").over(lw) > 0) & F.lit("l2r" in tasks)
    list_kept = ~train | (_uniform(tsc.seed, F.lit("l2r"), F.col("list_id")) < F.lit(tsc.l2r.negative_rate))
    base = base.withColumn("l2r", (is_list & list_kept).cast("int"))
    base = base.where((F.col("_w") > 0) | (F.col("l2r") == 1))
    # slots in a stable order; lists longer than G continue in further rows
    order = Window.partitionBy("list_id").orderBy("_ident", "item_id")
    base = (base.withColumn("_slot", F.row_number().over(order) - 1)
            .withColumn("group_id", F.xxhash64(F.col("list_id"), F.floor(F.col("_slot") / G))))
    target = items.select("item_id", F.col("shop").alias("_shop"), F.col("brand").alias("_brand"),
                          F.col("category").alias("_category"), F.col("tags").alias("_tags"),
                          F.col("log_price").alias("_log_price"))
    unknown = F.lit(enc.UNKNOWN)
    base = (base.join(target, "item_id", "left")
            .withColumn("cat", F.coalesce("_category", unknown))
            .withColumn("qtok", priors.first_query_token(F.col("query"), b.query_token)))
    by_category, by_query = priors.query_categories(searches, days.all_days)
    base = base.join(by_category, ["qtok", "cat", "dt"], "left").join(by_query, ["qtok", "dt"], "left")
    slot = F.struct(
        F.col("_slot").alias("pos"),
        F.xxhash64(F.lit(tsc.seed), F.lit("ctr"), "user_id", "_ident", "event_time").alias("example_id"),
        enc.hashed(F.col("item_id"), "item_id", b.item_id).alias("item"),
        F.coalesce("_shop", unknown).alias("item_shop"), F.coalesce("_brand", unknown).alias("item_brand"),
        F.col("cat").alias("item_category"),
        F.coalesce("_tags", F.array_repeat(F.lit(enc.PAD), K)).alias("item_tags"),
        F.coalesce("_log_price", _f32(0.0)).alias("item_log_price"),
        F.coalesce(priors.query_share(F.col("qtok"), F.col("qn"), F.col("qall")), _f32(0.0)).alias("item_query_share"),
        F.col("rank_features").alias("rank_features"),
        F.col("clicked").cast("float").alias("label_click"), F.col("carted").cast("float").alias("label_cart"),
        F.col("bought").cast("float").alias("label_buy"), F.col("_w").alias("ctr_weight"),
        F.col("_gain").alias("l2r_gain"))
    grouped = (base.groupBy("group_id", "list_id", "user_id", "event_time", "dt", "split", "l2r", "query")
               .agg(F.array_sort(F.collect_list(slot)).alias("_s")))
    s = F.col("_s")

    def field(name: str, fill: "Column") -> "Column":
        return pad(F.transform(s, lambda x: x[name]), G, fill)

    zero, pad_i = _f32(0.0), F.lit(enc.PAD)
    out = grouped.select(
        "group_id", "list_id", "user_id", "event_time", "dt", "split", "l2r",
        query_tokens(F.col("query"), seq).alias("query_tokens"), F.size(s).alias("n_items"),
        field("example_id", F.lit(0).cast("bigint")).alias("example_id"),
        field("item", pad_i).alias("item"), field("item_shop", pad_i).alias("item_shop"),
        field("item_brand", pad_i).alias("item_brand"), field("item_category", pad_i).alias("item_category"),
        pad(F.flatten(F.transform(s, lambda x: x["item_tags"])), G * K, pad_i).alias("item_tags"),
        field("item_log_price", zero).alias("item_log_price"),
        field("item_query_share", zero).alias("item_query_share"),
        pad(F.flatten(F.transform(s, lambda x: x["rank_features"])), G * rank_dim, zero).alias("rank_features"),
        *[field(c, zero).alias(c) for c in ("label_click", "label_cart", "label_buy", "ctr_weight", "l2r_gain")])
    out = cap_groups(out, tsc.ctr.cap_per_user_day, tsc.seed, "impressions")
    return _finish(out, "impressions", seq, rank_dim, G)


def follow_rows(fol: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig, rank_dim: int,
                days: pr.DaySplit, earlier: "DataFrame") -> "DataFrame":
    """``follow`` rows: the talent hashed into its own space, its category into the item categories' space,
    and ``talent_prior`` (:data:`features.priors.TALENT_PRIOR`) from ``earlier``: valid ``raw/follows``
    rows of the :data:`features.priors.POPULARITY_DAYS` days before the examples' days (or more)."""
    from pyspark.sql import functions as F

    b, s = seq.hash_buckets, tsc.follow
    split = pr.day_split_column(F.col("dt"), days)
    train = F.col("split") == pr.TRAIN
    u = _uniform(tsc.seed, F.lit("follow"), F.col("user_id"), F.col("talent_id"), F.col("event_time"))
    weight = (F.when(~train, F.lit(1.0)).when(F.col("followed") == 1, F.lit(float(s.positive_upsample)))
              .when(u < F.lit(s.negative_rate), F.lit(1.0)).otherwise(F.lit(0.0)))
    base = (fol.withColumn("split", split).withColumn("follow_weight", weight.cast("float"))
            .where(F.col("follow_weight") > 0)
            .select("user_id", "event_time", "dt", "split", "follow_weight",
                    F.xxhash64(F.lit(tsc.seed), F.lit("follow"), "user_id", "talent_id", "event_time")
                    .alias("group_id"),
                    enc.hashed(F.col("talent_id"), "talent_id", b.talent_id).alias("talent"),
                    enc.hashed(F.col("talent_category_id"), "category_id", b.category_id).alias("talent_category"),
                    F.col("followed").cast("float").alias("label_follow"))
            .dropDuplicates(["group_id"]))
    by_talent, by_user = priors.follow_counts(earlier, days.all_days, b.talent_id)
    prior = priors.talent_prior_columns()
    base = (base.join(by_talent, ["talent", "dt"], "left").join(by_user, ["user_id", "dt"], "left")
            .withColumn("talent_prior", F.array(*[prior[c] for c in priors.TALENT_PRIOR]))
            .drop("timps", "tfollows", "uimps", "ufollows"))
    return _finish(cap_groups(base, s.cap_per_user_day, tsc.seed, "follow"), "follow", seq, rank_dim,
                   tsc.group_size)


def ppp_rows(labels: "DataFrame", tsc: TrainingSetConfig, seq: SequencesConfig, rank_dim: int,
             days: pr.DaySplit) -> "DataFrame":
    """``ppp`` rows, stamped at the end of their day (the sequence includes the whole day ``dt``).

    The training split holds the training users' labels only; validation holds the training and
    validation users' labels of its days, test the training and test users' (``ppp_user``).
    """
    from pyspark.sql import functions as F

    split = pr.day_split_column(F.col("dt"), days)
    group = pr.ppp_user_column(F.col("user_id"), tsc)
    stamp = F.to_timestamp(F.date_add(F.to_date("dt"), 1))
    base = (labels.withColumn("split", split).withColumn("ppp_user", group)
            .where(((F.col("split") == pr.TRAIN) & (F.col("ppp_user") == pr.PPP_TRAIN_USER))
                   | ((F.col("split") == pr.VALID) & F.col("ppp_user").isin(pr.PPP_TRAIN_USER, pr.PPP_VALID_USER))
                   | ((F.col("split") == pr.TEST) & F.col("ppp_user").isin(pr.PPP_TRAIN_USER, pr.PPP_TEST_USER)))
            .select("user_id", "dt", "split", "ppp_user", stamp.alias("event_time"), (F.col("tier") - 1)
                    .alias("label_tier"),
                    F.xxhash64(F.lit(tsc.seed), F.lit("ppp"), "user_id", "dt").alias("group_id"))
            .dropDuplicates(["group_id"]))
    return _finish(cap_groups(base, tsc.ppp.cap_per_user_day, tsc.seed, "ppp"), "ppp", seq, rank_dim,
                   tsc.group_size)


def with_sequences(rows: "DataFrame", behaviour: "DataFrame", items: "DataFrame", users: "DataFrame",
                   seq: SequencesConfig) -> "DataFrame":
    """Attach each row's point-in-time sequence (as of its ``anchor_time``) and profile."""
    anchors = rows.select("group_id", "user_id", "anchor_time")
    selected = latest_n_before(behaviour, anchors, "group_id", seq.max_len, seq.lookback_days)
    full = assemble(selected, ["group_id"], items, users, seq, anchors=rows)
    return full.withColumnRenamed("anchor_time", "event_time")


def impression_slots(examples: "DataFrame", rank_dim: int, max_tags: int) -> "DataFrame":
    """One row per impression slot of ``impressions`` rows (exploded slot arrays): ``example_id``,
    ``slot``, the row's keys (group_id, list_id, split, user_id, event_time, dt, l2r) and the slot's
    item indices, ``item_log_price``, ``rank_features`` (array of ``rank_dim``), labels, ``ctr_weight``
    and ``l2r_gain``."""
    from pyspark.sql import functions as F

    imp = examples.where((F.col("kind") == "impressions") & (F.col("n_items") > 0))
    exploded = imp.select("group_id", "list_id", "split", "user_id", "event_time", "dt", "l2r", "item_tags",
                          "rank_features", *[c for c in t.SLOT_COLUMNS if c not in ("item_tags", "rank_features")],
                          F.posexplode(F.sequence(F.lit(0), F.col("n_items") - 1)).alias("slot", "_x"))
    scalar = [c for c in t.SLOT_COLUMNS if c not in ("item_tags", "rank_features")]
    return exploded.select(
        "group_id", "list_id", "split", "user_id", "event_time", "dt", "l2r", "slot",
        *[F.col(c)[F.col("slot")].alias(c) for c in scalar],
        F.slice("rank_features", F.col("slot") * rank_dim + 1, rank_dim).alias("rank_features"),
        F.slice("item_tags", F.col("slot") * max_tags + 1, max_tags).alias("item_tags"))


def behaviour_days(start: _dt.date, end: _dt.date, lookback_days: int) -> list[str]:
    """``dt`` partitions of raw/events needed for examples of [start, end] (ppp anchors at end of day)."""
    return range_days(start - _dt.timedelta(days=lookback_days), end)


def sampling_offsets(tsc: TrainingSetConfig) -> dict[str, float]:
    """Logit offsets that undo the training split's sampling: ``log(negative_rate / positive_upsample)``
    per binary task (0 when unsampled)."""
    import math

    def off(s: TaskSampling) -> float:
        return math.log(s.negative_rate / s.positive_upsample)

    return {"ctr": off(tsc.ctr), "follow": off(tsc.follow)}


__all__ = ["end_of_day", "impression_groups", "follow_rows", "ppp_rows", "with_sequences", "impression_slots",
           "range_days", "behaviour_days", "query_tokens", "sampling_offsets", "cap_groups"]
