"""Offline evaluation of DUPN predictions (numpy / scikit-learn).

Inputs are whole-evaluation-set arrays: ``outputs`` from :meth:`training.step.TrainTask.predict`
(concatenated over batches with :func:`concat`) and the matching label columns. Metrics that
are undefined on the data (one class only, no row of a task, no informative query group)
come out as NaN and the reason is logged.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from core.tables import TASK_IDS

logger = logging.getLogger(__name__)

NAN = float("nan")


def concat(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-batch dicts of arrays along the first axis (keys of the first part)."""
    parts = list(parts)
    if not parts:
        return {}
    return {k: np.concatenate([np.asarray(p[k]) for p in parts], axis=0) for k in parts[0]}


def auc(labels: np.ndarray, scores: np.ndarray, name: str = "auc") -> float:
    """ROC AUC of binary ``labels`` (N,) given ``scores`` (N,); NaN (logged) with fewer than two classes."""
    y = np.asarray(labels).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        logger.info("%s undefined: no rows", name)
        return NAN
    if y.all() or not y.any():
        logger.info("%s undefined: all %d rows have label %d", name, y.size, int(y[0]))
        return NAN
    return float(roc_auc_score(y, s))


def ndcg_at_k(group_ids: np.ndarray, relevance: np.ndarray, scores: np.ndarray, k: int = 10,
              name: str = "ndcg") -> tuple[float, int]:
    """Mean NDCG@k over query groups, with linear gains (DCG = Σ rel_i / log2(i + 1), i from 1).

    Rows sharing a ``group_id`` form one ranked list, sorted by descending score (ties keep
    the input order). Groups where every row has the same relevance (including all zero)
    rank nothing and are skipped.

    Args:
        group_ids: (N,) group of each row.
        relevance: (N,) graded relevance >= 0.
        scores: (N,) model scores.

    Returns:
        (mean NDCG@k over the informative groups or NaN if there is none, number of those groups).
    """
    g = np.asarray(group_ids).ravel()
    rel = np.asarray(relevance, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (g.size == rel.size == s.size):
        raise ValueError(f"{name}: group_ids, relevance and scores differ in length ({g.size}, {rel.size}, {s.size})")
    if g.size == 0:
        logger.info("%s undefined: no rows", name)
        return NAN, 0
    _, gidx = np.unique(g, return_inverse=True)
    n_groups = int(gidx.max()) + 1

    def dcg(order: np.ndarray) -> np.ndarray:
        grp = gidx[order]
        starts = np.searchsorted(grp, np.arange(n_groups))
        rank = np.arange(grp.size) - starts[grp]
        gain = np.where(rank < k, rel[order] / np.log2(rank + 2.0), 0.0)
        return np.bincount(grp, weights=gain, minlength=n_groups)

    # lexsort: last key is primary, stable for ties.
    actual = dcg(np.lexsort((-s, gidx)))
    ideal = dcg(np.lexsort((-rel, gidx)))
    rel_min = np.full(n_groups, np.inf)
    rel_max = np.full(n_groups, -np.inf)
    np.minimum.at(rel_min, gidx, rel)
    np.maximum.at(rel_max, gidx, rel)
    informative = (rel_max > rel_min) & (ideal > 0)
    if not informative.any():
        logger.info("%s undefined: none of %d groups has rows of different relevance", name, n_groups)
        return NAN, 0
    skipped = n_groups - int(informative.sum())
    if skipped:
        logger.debug("%s: skipped %d of %d groups whose rows all have the same relevance", name, skipped, n_groups)
    return float(np.mean(actual[informative] / ideal[informative])), int(informative.sum())


def _task_rows(labels: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    return np.asarray(labels["task_id"]).ravel() == TASK_IDS[task]


def evaluate(outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], k: int = 10) -> dict[str, float]:
    """Every metric the outputs allow.

    Args:
        outputs: (N, ...) arrays: ``ctr_prob``, ``ctcvr_prob``, ``l2r_score``, ``follow_prob``,
            ``ppp_probs`` (N, 7) — whichever the model has.
        labels: (N,) arrays ``task_id``, ``label_click``, ``label_buy``, ``label_follow``,
            ``label_tier``, ``l2r_weight``, ``group_id``.
        k: NDCG cut-off.

    Returns:
        ``ctr_auc``, ``ctcvr_auc`` (label_buy on CTR rows), ``l2r_auc`` (label_click on L2R
        rows), ``l2r_ndcg10`` (relevance l2r_weight * label_click per group_id) and
        ``l2r_groups``, ``follow_auc``, ``ppp_accuracy``, ``ppp_macro_f1``, and ``<task>_rows``.
    """
    out: dict[str, float] = {}
    if "ctr_prob" in outputs:
        rows = _task_rows(labels, "ctr")
        out["ctr_rows"] = float(rows.sum())
        out["ctr_auc"] = auc(labels["label_click"][rows], outputs["ctr_prob"][rows], "ctr_auc")
        if "ctcvr_prob" in outputs:
            out["ctcvr_auc"] = auc(labels["label_buy"][rows], outputs["ctcvr_prob"][rows], "ctcvr_auc")
    if "l2r_score" in outputs:
        rows = _task_rows(labels, "l2r")
        out["l2r_rows"] = float(rows.sum())
        click = np.asarray(labels["label_click"])[rows]
        score = np.asarray(outputs["l2r_score"])[rows]
        out["l2r_auc"] = auc(click, score, "l2r_auc")
        relevance = np.asarray(labels["l2r_weight"], dtype=np.float64)[rows] * click
        ndcg, groups = ndcg_at_k(np.asarray(labels["group_id"])[rows], relevance, score, k, f"l2r_ndcg{k}")
        out[f"l2r_ndcg{k}"] = ndcg
        out["l2r_groups"] = float(groups)
    if "follow_prob" in outputs:
        rows = _task_rows(labels, "follow")
        out["follow_rows"] = float(rows.sum())
        out["follow_auc"] = auc(labels["label_follow"][rows], outputs["follow_prob"][rows], "follow_auc")
    if "ppp_probs" in outputs:
        tier = np.asarray(labels["label_tier"]).ravel()
        rows = _task_rows(labels, "ppp") & (tier >= 0)
        out["ppp_rows"] = float(rows.sum())
        if rows.any():
            pred = np.asarray(outputs["ppp_probs"])[rows].argmax(axis=1)
            out["ppp_accuracy"] = float(np.mean(pred == tier[rows]))
            out["ppp_macro_f1"] = float(f1_score(tier[rows], pred, average="macro", zero_division=0))
        else:
            logger.info("ppp metrics undefined: no PPP row with a tier label")
            out["ppp_accuracy"] = out["ppp_macro_f1"] = NAN
    undefined = sorted(k_ for k_, v in out.items() if isinstance(v, float) and math.isnan(v))
    if undefined:
        logger.info("undefined metrics (NaN): %s", undefined)
    return out
