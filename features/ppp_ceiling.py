"""What a user's behaviour can reveal of the purchasing-power tier on the demo world.

The oracle's ``ppp_accuracy`` predicts the latent tier itself, which no model can see. This module
computes the Bayes classifier that knows the world's price model exactly (``features/demo_world.py``)
and reads only what the platform's models read: the user's behaviours as of the label's instant (the
end of its day, the latest ``max_len`` of the look-back, as in the training set) and the profile.

For one behaviour of type ``b`` of an item of category ``c`` and price level ``l``, the generator
draws the level with probability ``mass(c, l) · w_b(l, tier) / Z(c, b, tier)``, with
``w_b = exp(-(l - tier)² / 2σ_b²)``; the item within (c, l) does not depend on the tier. So

    log P(tier | behaviours, profile) = log prior(tier) + Σ_events [log w_b(l, tier) − log Z(c, b, tier)]
                                        + log P(city | tier) + log P(age | tier) + const

The label is the tier or, with probability ``ppp_label_noise``, a neighbouring one; the classifier
predicts the label with the highest probability under the posterior. It knows every item's true
level (models see a noisy price) and treats every logged behaviour as organic (clicks and buys that
follow an impression also depend on the tier, a little more weakly), so it is an estimate of the
best accuracy the behaviour allows, not a strict bound. ``benchmarks/bench_ppp_ceiling.py`` reports it.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core import tables as t
from features.demo_world import BEHAVIOR_SIGMA, BEHAVIORS, ITEM_ID0, LEVELS, TIER_P, Catalogue

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from core.config import DemoWorldConfig
    from core.delta import DeltaTables

TIERS = len(LEVELS)
# profile: city level and age level given the tier (features/demo_world.py, users)
CITY = (lambda tier: 6.0 - 0.7 * tier, 0.9, 1, 5)
AGE = (lambda tier: 2.0 + 0.3 * tier, 1.4, 0, 6)


def level_log_likelihoods(cat: Catalogue, catalogue: bool = True) -> np.ndarray:
    """(C, 4, 7 levels, 7 tiers): log P(level | category, behaviour, tier) of the generator.

    With ``catalogue=False`` every level of every category is equally available: the Gaussian around
    the tier normalised over the levels, i.e. what the prices say without knowing which levels each
    category's catalogue offers."""
    lv = LEVELS.astype(float)
    w = np.exp(-((lv[None, :, None] - lv[None, None, :]) ** 2) / (2 * BEHAVIOR_SIGMA[:, None, None] ** 2))  # b,l,τ
    mass = cat.seg_mass if catalogue else np.ones_like(cat.seg_mass)
    joint = mass[:, None, :, None] * w[None]  # (C, 4, l, τ)
    z = joint.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(joint) - np.log(z)


def item_tier_likelihoods(cfg: "DemoWorldConfig", cat: Catalogue | None = None, catalogue: bool = True) \
        -> pd.DataFrame:
    """One row per (item, behaviour): ``item_id``, ``behavior`` and ``ll`` (7 floats), the log
    likelihood of the behaviour's item level under each tier (``catalogue``: see
    :func:`level_log_likelihoods`). Catalogue-sized (items × 4)."""
    cat = cat or Catalogue.build(cfg)
    ll = level_log_likelihoods(cat, catalogue)  # (C, 4, l, τ)
    idx = np.arange(cfg.n_items)
    per_item = ll[cat.item_category[idx], :, cat.item_level[idx] - 1, :]  # (I, 4, τ)
    per_item = np.maximum(per_item, -50.0)  # a level the tier cannot produce: very unlikely, not impossible
    frames = [pd.DataFrame({"item_id": ITEM_ID0 + idx, "behavior": str(b),
                            "ll": list(per_item[:, k, :].astype(np.float64))})
              for k, b in enumerate(BEHAVIORS)]
    return pd.concat(frames, ignore_index=True)


def _binned_normal_log(mean: float, sd: float, lo: int, hi: int) -> np.ndarray:
    """log P(value) of ``clip(rint(N(mean, sd)), lo, hi)`` for values lo..hi."""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - mean) / (sd * math.sqrt(2.0))))

    values = np.arange(lo, hi + 1)
    p = [(1.0 if v == hi else cdf(v + 0.5)) - (0.0 if v == lo else cdf(v - 0.5)) for v in values]
    return np.log(np.maximum(np.array(p), 1e-300))


def profile_log_likelihoods() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(city table, age table): ``city_level`` / ``age_level`` and ``ll`` (7 floats, one per tier)."""
    out = []
    for (mean, sd, lo, hi), col in ((CITY, "city_level"), (AGE, "age_level")):
        table = np.stack([_binned_normal_log(mean(float(tier)), sd, lo, hi) for tier in LEVELS], axis=1)
        out.append(pd.DataFrame({col: np.arange(lo, hi + 1, dtype=np.int32), "ll": list(table)}))
    return out[0], out[1]


def label_given_tier(noise: float) -> np.ndarray:
    """(7 labels, 7 tiers): P(label | tier) — the tier, or a neighbour with probability ``noise``
    (half each side, clipped at the ends)."""
    m = np.zeros((TIERS, TIERS))
    for tier in range(TIERS):
        m[tier, tier] += 1 - noise
        m[max(tier - 1, 0), tier] += noise / 2
        m[min(tier + 1, TIERS - 1), tier] += noise / 2
    return m


def posterior_labels(log_post: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised log posteriors (N, 7) -> (predicted tier 1..7, predicted label 1..7)."""
    p = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = p @ label_given_tier(noise).T
    return p.argmax(axis=1) + 1, labels.argmax(axis=1) + 1


def label_rows(tables: "DeltaTables", days: list[str], max_len: int, lookback_days: int) -> "DataFrame":
    """Per label (user_id, dt, tier): the summed log likelihoods of its behaviours (the latest
    ``max_len`` in the look-back, as of the end of the label's day) under each tier, as ``ll``
    (7 floats), and ``n_events``. The item likelihoods must be registered as view ``_ppp_item_ll``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = tables.spark
    labels = (tables.read(t.PPP_LABELS, dt=days).select("user_id", "dt", "tier")
              .withColumn("_anchor", F.to_timestamp(F.date_add(F.to_date("dt"), 1))))
    first = min(_dt.date.fromisoformat(d) for d in days) - _dt.timedelta(days=lookback_days)
    last = max(_dt.date.fromisoformat(d) for d in days)
    span = [(first + _dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    existing = set(tables.partitions(t.EVENTS))
    events = (tables.read(t.EVENTS, dt=[d for d in span if d in existing])
              .select("user_id", "item_id", "behavior", "scene", "event_time").dropDuplicates())
    seen = (labels.join(events, "user_id")
            .where((F.col("event_time") < F.col("_anchor"))
                   & (F.col("event_time") >= F.col("_anchor") - F.expr(f"INTERVAL {int(lookback_days)} DAYS"))))
    w = Window.partitionBy("user_id", "dt").orderBy(F.col("event_time").desc(), F.col("item_id").desc(),
                                                    F.col("behavior").desc())
    latest = seen.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= max_len)
    scored = latest.join(spark.table("_ppp_item_ll"), ["item_id", "behavior"])
    sums = scored.groupBy("user_id", "dt").agg(
        F.count("*").alias("n_events"),
        *[F.sum(F.col("ll")[k]).alias(f"ll{k}") for k in range(TIERS)])
    return (labels.join(sums, ["user_id", "dt"], "left")
            .select("user_id", "dt", "tier", F.coalesce("n_events", F.lit(0)).alias("n_events"),
                    F.array(*[F.coalesce(f"ll{k}", F.lit(0.0)) for k in range(TIERS)]).alias("ll")))


def ceiling_scores(spark: "SparkSession", tables: "DeltaTables", cfg: "DemoWorldConfig", days: list[str],
                   max_len: int, lookback_days: int, user_groups: "dict[str, DataFrame] | None" = None,
                   use_profile: bool = True, catalogue: bool = True) -> dict[str, dict[str, float]]:
    """Accuracy of the Bayes classifier on the labels of ``days``, per user group.

    ``user_groups`` maps a name to a DataFrame of ``user_id`` (e.g. the protocol's test users);
    without it, one group ``all``. Per group: ``ppp_accuracy`` (against the noisy labels, as models
    are scored), ``tier_accuracy`` (against the latent tier), ``labels`` and ``mean_events``.
    ``catalogue=False``: the classifier does not know which price levels each category offers.
    """
    from pyspark.sql import functions as F

    spark.createDataFrame(item_tier_likelihoods(cfg, catalogue=catalogue)).createOrReplaceTempView("_ppp_item_ll")
    rows = label_rows(tables, days, max_len, lookback_days)
    if use_profile:
        city, age = profile_log_likelihoods()
        users = tables.read(t.USERS).select("user_id", "city_level", "age_level")
        rows = (rows.join(users, "user_id", "left")
                .join(F.broadcast(spark.createDataFrame(city).withColumnRenamed("ll", "ll_city")), "city_level", "left")
                .join(F.broadcast(spark.createDataFrame(age).withColumnRenamed("ll", "ll_age")), "age_level", "left"))
        zero = F.array(*[F.lit(0.0)] * TIERS)
        rows = rows.withColumn("ll", F.zip_with("ll", F.coalesce("ll_city", zero), lambda a, b: a + b))
        rows = rows.withColumn("ll", F.zip_with("ll", F.coalesce("ll_age", zero), lambda a, b: a + b))
    truth = tables.read(t.TRUTH_USERS).select("user_id", F.col("tier").alias("true_tier"))
    rows = rows.join(truth, "user_id").select("user_id", "tier", "true_tier", "n_events", "ll")
    groups: "dict[str, DataFrame | None]" = dict(user_groups) if user_groups else {"all": None}
    out: dict[str, dict[str, float]] = {}
    prior = np.log(TIER_P)
    for name, users_df in groups.items():
        part = rows if users_df is None else rows.join(users_df.select("user_id").distinct(), "user_id")
        # labels of a few days of held-out users: thousands of rows at most (bounded by the label share)
        pdf = pd.DataFrame(part.toPandas())
        if pdf.empty:
            out[name] = {"ppp_accuracy": float("nan"), "tier_accuracy": float("nan"), "labels": 0.0,
                         "mean_events": float("nan")}
            continue
        log_post = np.stack(pdf["ll"].to_numpy()) + prior[None, :]
        tier_hat, label_hat = posterior_labels(log_post, cfg.ppp_label_noise)
        out[name] = {"ppp_accuracy": float((label_hat == pdf["tier"].to_numpy()).mean()),
                     "tier_accuracy": float((tier_hat == pdf["true_tier"].to_numpy()).mean()),
                     "labels": float(len(pdf)), "mean_events": float(pdf["n_events"].mean())}
    return out


__all__ = ["ceiling_scores", "item_tier_likelihoods", "label_given_tier", "label_rows",
           "level_log_likelihoods", "posterior_labels", "profile_log_likelihoods"]
