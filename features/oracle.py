"""Best achievable scores on the demo world: the generator's own probabilities as predictors.

Computed with Spark from ``raw/_truth/*`` over evaluation days (by default the held-out last
day), with the same metric definitions the trainer reports (:mod:`training.metrics`):
exact rank AUC (ties averaged), NDCG@10 with linear gains over impression lists, PPP
accuracy and macro-F1.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from core import tables as t
from features.encoding import L2R_WEIGHTS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.config import TrainingSetConfig
    from core.delta import DeltaTables


def rank_auc(df: "DataFrame", score: str, label: str, buckets: int = 16) -> float:
    """Exact ROC AUC of ``score`` for binary ``label`` (Mann-Whitney with averaged tie ranks).

    The rank of each distinct score is the count of rows with a lower score, plus (ties + 1) / 2. The
    distinct scores are cut into ``buckets`` ranges at approximate quantiles (fixed once, so every pass
    sees the same ranges); the rows below each range come from the ranges' totals (``buckets`` numbers),
    and a window per range adds those inside it. No window spans the whole table, so no partition holds
    every score."""
    from pyspark.sql import functions as F

    # three passes read it (the quantiles, the ranges' totals, the sum): computed once, one row per score
    by_score = df.groupBy(score).agg(F.count("*").alias("n"), F.sum(label).alias("pos")).persist()
    try:
        return _ranked_auc(by_score, score, buckets)
    finally:
        by_score.unpersist()


def _ranked_auc(by_score: "DataFrame", score: str, buckets: int) -> float:
    """:func:`rank_auc` on ``by_score``: one row per distinct ``score`` with its rows ``n`` and positives."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cuts = sorted(set(by_score.approxQuantile(score, [i / buckets for i in range(1, buckets)], 0.001)))
    bucket = F.lit(0)
    for c in cuts:
        bucket = bucket + (F.col(score) > F.lit(c)).cast("int")
    ranged = by_score.withColumn("_b", F.when(F.col(score).isNull(), F.lit(-1)).otherwise(bucket))  # nulls lowest
    totals = {int(r["_b"]): int(r["n"]) for r in ranged.groupBy("_b").agg(F.sum("n").alias("n")).collect()}
    offset, before = 0, {}
    for b in sorted(totals):
        before[b] = offset
        offset += totals[b]
    start = F.create_map(*[x for b, o in before.items() for x in (F.lit(b), F.lit(o))]) if before else None
    w = Window.partitionBy("_b").orderBy(score).rowsBetween(Window.unboundedPreceding, -1)
    below = F.coalesce(F.sum("n").over(w), F.lit(0)) + (start[F.col("_b")] if start is not None else F.lit(0))
    ranked = ranged.withColumn("below", below)
    agg = ranked.agg(F.sum(F.col("pos") * (F.col("below") + (F.col("n") + 1) / 2.0)).alias("rsum"),
                     F.sum("pos").alias("npos"), F.sum("n").alias("n")).first()
    if agg is None:
        return float("nan")
    npos, n = float(agg["npos"] or 0), float(agg["n"] or 0)
    nneg = n - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return (float(agg["rsum"]) - npos * (npos + 1) / 2.0) / (npos * nneg)


def ndcg_at_k(df: "DataFrame", group: Sequence[str], score: str, gain: str, k: int = 10) -> float:
    """Mean NDCG@k over groups that have at least one positive gain (linear gains, log2 discount)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    g = list(group)
    by_score = Window.partitionBy(*g).orderBy(F.col(score).desc(), F.col(gain).asc())
    by_gain = Window.partitionBy(*g).orderBy(F.col(gain).desc())
    disc = lambda pos: F.when(pos <= k, F.col(gain) / F.log2(pos + 1)).otherwise(0.0)  # noqa: E731
    scored = (df.withColumn("_p", F.row_number().over(by_score)).withColumn("_i", F.row_number().over(by_gain))
              .groupBy(*g).agg(F.sum(disc(F.col("_p"))).alias("dcg"), F.sum(disc(F.col("_i"))).alias("idcg"))
              .where(F.col("idcg") > 0))
    row = scored.agg(F.avg(F.col("dcg") / F.col("idcg")).alias("ndcg")).first()
    return float(row["ndcg"]) if row and row["ndcg"] is not None else float("nan")


def l2r_gain(clicked: str = "clicked", carted: str = "carted", bought: str = "bought") -> "Column":
    """Graded relevance of an impression: the behaviour weight of its deepest action, 0 if not clicked."""
    from pyspark.sql import functions as F

    return (F.when(F.col(clicked) == 0, 0.0)
            .when(F.col(bought) == 1, L2R_WEIGHTS["buy"])
            .when(F.col(carted) == 1, L2R_WEIGHTS["cart"])
            .otherwise(L2R_WEIGHTS["click"]))


L2R_LIST = ("user_id", "event_time", "query")


def truth_with_lists(tables: "DeltaTables", days: Sequence[str]) -> "DataFrame":
    """``raw/_truth/impressions`` of ``days`` joined to ``raw/impressions`` for each impression's
    scene, query and cart."""
    truth = tables.read(t.TRUTH_IMPRESSIONS, dt=list(days))
    imp = tables.read(t.IMPRESSIONS, dt=list(days)).select(
        "user_id", "item_id", "event_time", "scene", "query", "carted")
    return truth.join(imp, ["user_id", "item_id", "event_time"])


def l2r_rows(joined: "DataFrame") -> "DataFrame":
    """The search impressions of ``joined`` (truth joined to ``raw/impressions``) with the oracle's
    ``score`` (the expected graded gain), the ``gain`` and ``list_clicks``, the clicks of its list.

    The models' L2R rows are the lists with at least one click (``features/training_set.py``): the L2R
    AUC is scored on those only. Over every search impression it would be about 0.10 higher, since a
    list without a click holds only negatives, which the oracle ranks low with its user-level terms."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    expected_gain = F.col("p_click") * (
        F.col("p_buy_given_click") * L2R_WEIGHTS["buy"]
        + (1 - F.col("p_buy_given_click")) * (F.col("p_cart_given_click") * L2R_WEIGHTS["cart"]
                                              + (1 - F.col("p_cart_given_click")) * L2R_WEIGHTS["click"]))
    return (joined.where(F.col("scene") == "search")
            .withColumn("score", expected_gain).withColumn("gain", l2r_gain())
            .withColumn("list_clicks", F.sum("clicked").over(Window.partitionBy(*L2R_LIST))))


def oracle_scores(tables: "DeltaTables", days: Sequence[str],
                  split: "TrainingSetConfig | None" = None) -> dict[str, float]:
    """Oracle metrics of each task over ``days`` (dt strings).

    With ``split`` (``training_set``), PPP accuracy is also given on the evaluation protocol's held-out
    test users (``ppp_accuracy``, the number models are compared on) and on the training users
    (``ppp_accuracy_seen``); without it, ``ppp_accuracy`` covers every labelled user.
    """
    from pyspark.sql import functions as F

    truth = tables.read(t.TRUTH_IMPRESSIONS, dt=list(days))
    joined = truth_with_lists(tables, days)
    out: dict[str, float] = {}
    out["ctr_auc"] = rank_auc(truth, "p_click", "clicked")
    out["ctcvr_auc"] = rank_auc(truth.withColumn("p", F.col("p_click") * F.col("p_buy_given_click")), "p", "bought")
    out["cvr_auc"] = rank_auc(truth.where(F.col("clicked") == 1), "p_buy_given_click", "bought")
    search = l2r_rows(joined)
    out["l2r_auc"] = rank_auc(search.where(F.col("list_clicks") > 0), "score", "clicked")
    out["l2r_ndcg10"] = ndcg_at_k(search, L2R_LIST, "score", "gain", 10)
    fol = tables.read(t.TRUTH_FOLLOWS, dt=list(days))
    out["follow_auc"] = rank_auc(fol, "p_follow", "followed")
    shop = tables.read(t.TRUTH_SHOP_PREFS, dt=list(days))
    out["shop_auc"] = rank_auc(shop, "p_label", "label")
    labels = tables.read(t.PPP_LABELS, dt=list(days))
    tiers = tables.read(t.TRUTH_USERS).select("user_id", F.col("tier").alias("true_tier"))
    ppp = labels.join(tiers, "user_id")
    if split is None:
        out.update(_accuracy_macro_f1(ppp, "true_tier", "tier"))
        return out
    from core.protocol import PPP_TEST_USER, PPP_TRAIN_USER, ppp_user_column

    ppp = ppp.withColumn("_group", ppp_user_column(F.col("user_id"), split))
    out.update(_accuracy_macro_f1(ppp.where(F.col("_group") == PPP_TEST_USER), "true_tier", "tier"))
    out["ppp_accuracy_seen"] = _accuracy_macro_f1(ppp.where(F.col("_group") == PPP_TRAIN_USER), "true_tier",
                                                  "tier")["ppp_accuracy"]
    return out


def _accuracy_macro_f1(df: "DataFrame", pred: str, label: str) -> dict[str, float]:
    from pyspark.sql import functions as F

    counts = {(r[pred], r[label]): r["n"] for r in df.groupBy(pred, label).agg(F.count("*").alias("n")).collect()}
    total = sum(counts.values())
    if total == 0:
        return {"ppp_accuracy": float("nan"), "ppp_macro_f1": float("nan")}
    classes = sorted({c for pair in counts for c in pair})
    f1s = []
    for c in classes:
        tp = counts.get((c, c), 0)
        fp = sum(v for (p, y), v in counts.items() if p == c and y != c)
        fn = sum(v for (p, y), v in counts.items() if y == c and p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"ppp_accuracy": sum(v for (p, y), v in counts.items() if p == y) / total,
            "ppp_macro_f1": sum(f1s) / len(f1s)}
