"""Normalisation statistics of every dense model input, and drift between populations.

The **serving population** of a day is exactly what the nightly job scores
(``features/user_sequences`` of that day: one row per active user) for the user-side inputs,
and the day's unsampled impressions for the item-side inputs (target item price, ranking
features). Training loads these statistics into frozen normalisation layers, so that the
filtering and re-sampling of training examples cannot shift them (the paper's lesson:
batch-norm statistics learned on re-sampled training data hurt online).

Drift between two populations is the standardised mean difference per feature:
``|mean_a - mean_b| / sqrt((var_a + var_b) / 2)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from core.tables import USER_DENSE_DIM

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SERVING, TRAINING = "serving", "training"
USER_SIDE = ("seq_log_price", "user_dense")
ITEM_SIDE = ("item_log_price", "rank_features")


@dataclass(frozen=True)
class FeatureStat:
    feature: str
    count: int
    mean: float
    var: float


def _moments(df: "DataFrame", exprs: dict[str, "Column"], weight: "Column | None" = None) -> list[FeatureStat]:
    """count / mean / population variance of each expression, in one pass; with ``weight``, the
    weighted mean and variance (rows of weight k count k times, as a sampling weight means)."""
    from pyspark.sql import functions as F

    aggs = []
    for name, e in exprs.items():
        if weight is None:
            mean, var = F.avg(e), F.var_pop(e)
        else:
            w = F.when(e.isNotNull(), weight)
            total = F.sum(w)
            mean = F.sum(w * e) / total
            var = F.sum(w * e * e) / total - mean * mean
        aggs += [F.count(e).alias(f"{name}#n"), mean.alias(f"{name}#m"), var.alias(f"{name}#v")]
    row = df.agg(*aggs).first()
    values = row.asDict() if row is not None else {}
    out = []
    for name in exprs:
        n = int(values.get(f"{name}#n") or 0)
        out.append(FeatureStat(name, n, float(values[f"{name}#m"]) if n else 0.0,
                               float(values[f"{name}#v"]) if n else 1.0))
    return out


def user_side_stats(seq: "DataFrame") -> list[FeatureStat]:
    """``seq_log_price`` over the valid positions of every sequence, ``user_dense[i]`` per row."""
    from pyspark.sql import functions as F

    prices = seq.select(F.explode(F.slice("seq_log_price", 1, F.col("seq_len"))).alias("p"))
    out = _moments(prices, {"seq_log_price": F.col("p")})
    out += _moments(seq, {f"user_dense[{i}]": F.col("user_dense")[i] for i in range(USER_DENSE_DIM)})
    return out


def item_side_stats(rows: "DataFrame", rank_dim: int, weight: str | None = None) -> list[FeatureStat]:
    """``item_log_price`` and ``rank_features[i]`` over impression-like rows (weighted by the column
    ``weight``, e.g. the training split's sampling weight ``ctr_weight``)."""
    from pyspark.sql import functions as F

    exprs = {"item_log_price": F.col("item_log_price")}
    exprs.update({f"rank_features[{i}]": F.col("rank_features")[i] for i in range(rank_dim)})
    return _moments(rows, exprs, F.col(weight).cast("double") if weight else None)


CATEGORY_PRICE = "category_log_price"
REL_PRICE = "rel_log_price"
BEHAVIOUR_CATEGORY_PRICE = "category_behaviour_log_price"
BEHAVIOUR_REL_PRICE = "rel_behaviour_log_price"
# ``model.price_reference`` -> (the per-category mean price's statistic, the relative price's statistic)
PRICE_REFERENCES = {"catalogue": (CATEGORY_PRICE, REL_PRICE),
                    "behaviours": (BEHAVIOUR_CATEGORY_PRICE, BEHAVIOUR_REL_PRICE)}


def category_price_stats(items: "DataFrame") -> list[FeatureStat]:
    """The mean log price of each (hashed) category over the item snapshot (``category_log_price[<index>]``),
    and the moments of an item's log price relative to its category's mean (``rel_log_price``).

    The model subtracts a category's reference price from every price (``ModelSpec.category_log_price``,
    ``model.price_reference``): a price is informative about purchasing power only relative to its
    category. Takes :func:`features.sequences.encode_items` rows; one small aggregate per category
    reaches the driver (bounded by the category vocabulary).
    """
    from pyspark.sql import functions as F

    priced = items.where(F.col("log_price") > 0).select("category", F.col("log_price").alias("p"))
    return _category_price_stats(priced, CATEGORY_PRICE, REL_PRICE)


def behaviour_price_stats(seq: "DataFrame") -> list[FeatureStat]:
    """The mean log price of each category over the serving population's behaviours, i.e. the valid
    positions of ``features/user_sequences`` with a known price (``category_behaviour_log_price[<index>]``),
    and the moments of a behaviour's log price relative to that mean (``rel_behaviour_log_price``).

    Weighted by behaviour, a category's mean follows the price levels users actually meet there (what
    its shops offer, as often as they are visited) rather than the catalogue's item count, so a price
    above it says "dearer than what this category's visitors take" (docs/learning.md).
    """
    from pyspark.sql import functions as F

    valid = seq.select(F.posexplode(F.slice("seq_log_price", 1, F.col("seq_len"))).alias("_i", "p"), "seq_category")
    priced = valid.where(F.col("p") > 0).select(F.col("seq_category")[F.col("_i")].alias("category"), "p")
    return _category_price_stats(priced, BEHAVIOUR_CATEGORY_PRICE, BEHAVIOUR_REL_PRICE)


def _category_price_stats(priced: "DataFrame", mean_name: str, rel_name: str) -> list[FeatureStat]:
    """``mean_name[<category>]`` moments of ``p`` per category, and ``rel_name``: the moments of ``p``
    minus its category's mean, over rows (category, p)."""
    from pyspark.sql import functions as F

    per_cat = priced.groupBy("category").agg(F.count(F.lit(1)).alias("n"), F.avg("p").alias("m"),
                                             F.var_pop("p").alias("v")).collect()
    out = [FeatureStat(f"{mean_name}[{int(r['category'])}]", int(r["n"]), float(r["m"]), float(r["v"] or 0.0))
           for r in per_cat]
    # the collected means (one row per category) rather than a second aggregation of every row
    key = priced.schema["category"].dataType.simpleString()
    means = priced.sparkSession.createDataFrame([(r["category"], float(r["m"])) for r in per_cat],
                                                f"category {key}, _m double")
    rel = priced.join(F.broadcast(means), "category").select((F.col("p") - F.col("_m")).alias("r"))
    return out + _moments(rel, {rel_name: F.col("r")})


def stats_frame(spark: "SparkSession", stats: Iterable[FeatureStat], population: str, day: str) -> "DataFrame":
    from core.tables import FEATURE_STATS

    return spark.createDataFrame([(s.feature, population, s.count, s.mean, s.var, day) for s in stats],
                                 FEATURE_STATS.schema)


def smd(a: FeatureStat, b: FeatureStat) -> float:
    """Standardised mean difference of two populations of one feature."""
    pooled = math.sqrt(max((a.var + b.var) / 2.0, 0.0))
    diff = abs(a.mean - b.mean)
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / pooled


def drift(serving: Iterable[FeatureStat], training: Iterable[FeatureStat]) -> dict[str, float]:
    """SMD per feature present in both populations."""
    train = {s.feature: s for s in training}
    return {s.feature: smd(s, train[s.feature]) for s in serving if s.feature in train and train[s.feature].count}


def norm_from_stats(stats: Iterable[FeatureStat], rank_dim: int,
                    price_reference: str = "catalogue") -> dict[str, tuple[list[float], list[float]]]:
    """The ``ModelSpec.norm`` mapping: dense input name -> (means, variances). Its ``rel_log_price``
    entry is the relative price's moments under ``price_reference`` (:data:`PRICE_REFERENCES`)."""
    by = {s.feature: s for s in stats}

    def vec(name: str, n: int) -> tuple[list[float], list[float]]:
        parts = [by.get(f"{name}[{i}]") for i in range(n)]
        return ([p.mean if p else 0.0 for p in parts], [p.var if p else 1.0 for p in parts])

    def one(name: str) -> tuple[list[float], list[float]]:
        s = by.get(name)
        return ([s.mean if s else 0.0], [s.var if s else 1.0])

    return {"seq_log_price": one("seq_log_price"), "item_log_price": one("item_log_price"),
            "user_dense": vec("user_dense", USER_DENSE_DIM), "rank_features": vec("rank_features", rank_dim),
            REL_PRICE: one(PRICE_REFERENCES[price_reference][1])}


def category_prices(stats: Iterable[FeatureStat], price_reference: str = "catalogue") -> dict[int, float]:
    """Hashed category index -> its reference log price under ``price_reference``: the catalogue's mean
    (``category_log_price[<index>]``), or the behaviours' mean (``category_behaviour_log_price[<index>]``)
    with the catalogue's for a category no serving user's behaviour reached."""
    def means(name: str) -> dict[int, float]:
        prefix = f"{name}["
        return {int(s.feature[len(prefix):-1]): s.mean for s in stats if s.feature.startswith(prefix)}

    stats = list(stats)
    out = means(CATEGORY_PRICE)
    if price_reference != "catalogue":
        out.update(means(PRICE_REFERENCES[price_reference][0]))
    return out


def has_reference(stats: Iterable[FeatureStat], price_reference: str) -> bool:
    """Whether ``stats`` hold the relative-price statistic of ``price_reference`` (a day's statistics
    written before ``behaviours`` existed do not)."""
    name = PRICE_REFERENCES[price_reference][1]
    return any(s.feature == name for s in stats)


def read_stats(df: "DataFrame", population: str = SERVING) -> list[FeatureStat]:
    """Rows of ``features/feature_stats`` (one day, one population; a few dozen rows) as objects."""
    from pyspark.sql import functions as F

    rows = df.where(F.col("population") == population).collect()
    return [FeatureStat(r["feature"], int(r["count"]), float(r["mean"]), float(r["var"])) for r in rows]
