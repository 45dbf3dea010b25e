"""The gradient-boosted trees baseline (LightGBM) on the hand-crafted point-in-time features of
``features/gbdt_examples`` (:mod:`features.gbdt`), under the same evaluation protocol as every
other model: one booster per task, the number of trees chosen by early stopping on the
validation split, the test split scored once into :class:`training.evaluation.Predictions`.

* ``ctr``: binary, impression slots weighted by their sampling weight;
* ``cvr``: binary on clicked impressions (label buy), so ``ctcvr_prob = p_ctr · p_cvr`` as in ESMM;
* ``l2r``: LambdaRank over the L2R lists, graded relevance (none 0 < click 1 < cart 2 < buy 3);
* ``follow``: binary;
* ``ppp``: 7-class softmax on the training users' labels, early-stopped on the validation users.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from core.protocol import PPP_TRAIN_USER
from training.data import read_arrays
from training.evaluation import Predictions

logger = logging.getLogger(__name__)

KEYS = ("task", "split", "user_id", "list_id", "l2r", "label_click", "label_buy", "l2r_gain", "ctr_weight",
        "label_follow", "follow_weight", "label_tier", "ppp_user")
GRADE = {0.0: 0, 1.0: 1, 2.0: 2, 4.0: 3}  # l2r gain of a clicked slot -> relevance grade


@dataclass(frozen=True)
class GBDTParams:
    """LightGBM settings (the same for every task)."""

    num_leaves: int = 63
    learning_rate: float = 0.05
    max_rounds: int = 1500
    early_stopping_rounds: int = 50
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    threads: int = 0

    def lightgbm(self, seed: int) -> dict[str, Any]:
        return {"num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
                "lambda_l2": self.lambda_l2, "seed": seed, "num_threads": self.threads, "verbosity": -1,
                "deterministic": True, "force_row_wise": True}


@dataclass
class GBDTResult:
    """Test predictions, validation metrics and timing of one GBDT run (one seed)."""

    test: Predictions
    valid: Predictions
    rounds: dict[str, int] = field(default_factory=dict)
    train_seconds: float = 0.0
    train_examples: int = 0
    importance: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def load_split(files: Sequence[str], features: Sequence[str]) -> dict[str, np.ndarray]:
    return read_arrays(files, [*KEYS, *features])


def feature_matrix(data: Mapping[str, np.ndarray], rows: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """The ``features`` columns of ``rows`` (a boolean mask or row indices) as a float32 matrix (rows, features)."""
    if not len(features):
        return np.zeros((int(rows.sum()) if rows.dtype == bool else len(rows), 0), np.float32)
    return np.stack([np.asarray(data[f], dtype=np.float32)[rows] for f in features], axis=1)


def task_rows(data: Mapping[str, np.ndarray], task: str, training: bool) -> np.ndarray:
    """The rows of ``data`` (a :func:`load_split`) that hold ``task``'s examples, in the order its predictions
    list them; ``training``: only those a booster trains on (sampled-out impressions and follows, and PPP
    labels of users outside the training group, left out)."""
    kind = np.asarray(data["task"]).astype(str)
    if task in ("ctr", "ctcvr"):
        rows = kind == "impressions"
        return rows & (data["ctr_weight"] > 0) if training else rows
    if task == "cvr":
        rows = (kind == "impressions") & (data["label_click"] > 0.5)
        return rows & (data["ctr_weight"] > 0) if training else rows
    if task == "l2r":
        return (kind == "impressions") & (data["l2r"] == 1)
    if task == "follow":
        rows = kind == "follow"
        return rows & (data["follow_weight"] > 0) if training else rows
    rows = (kind == "ppp") & (data["label_tier"] >= 0)
    return rows & (data["ppp_user"] == PPP_TRAIN_USER) if training else rows & (data["ppp_user"] != PPP_TRAIN_USER)


def _fit(task: str, train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], features: Sequence[str],
         params: GBDTParams, seed: int) -> Any:
    import lightgbm as lgb

    tr, va = task_rows(train, task, True), task_rows(valid, task, False)
    p = params.lightgbm(seed)
    if task in ("ctr", "cvr"):
        y_tr = train["label_click" if task == "ctr" else "label_buy"][tr]
        y_va = valid["label_click" if task == "ctr" else "label_buy"][va]
        w = train["ctr_weight"][tr]
        p.update(objective="binary", metric="auc")
    elif task == "follow":
        y_tr, y_va, w = train["label_follow"][tr], valid["label_follow"][va], train["follow_weight"][tr]
        p.update(objective="binary", metric="auc")
    elif task == "ppp":
        y_tr, y_va, w = train["label_tier"][tr], valid["label_tier"][va], None
        p.update(objective="multiclass", num_class=7, metric="multi_error")
    else:
        def ranked(d: Mapping[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Rows sorted by list, their relevance grades and the list sizes (LightGBM's query groups)."""
            idx = np.flatnonzero(rows)
            idx = idx[np.argsort(d["list_id"][idx], kind="stable")]
            _, counts = np.unique(d["list_id"][idx], return_counts=True)
            gains = d["l2r_gain"][idx] * d["label_click"][idx]
            return idx, np.array([GRADE.get(float(x), 3) for x in gains], np.int32), counts

        tr_idx, y_tr, tr_groups = ranked(train, tr)
        va_idx, y_va, va_groups = ranked(valid, va)
        p.update(objective="lambdarank", metric="ndcg", eval_at=[10], label_gain=[0, 1, 2, 4])
        d_tr = lgb.Dataset(feature_matrix(train, tr_idx, features), y_tr, group=tr_groups, feature_name=list(features),
                           free_raw_data=True)
        d_va = lgb.Dataset(feature_matrix(valid, va_idx, features), y_va, group=va_groups, reference=d_tr)
        return _train(lgb, p, d_tr, d_va, params), len(tr_idx)
    d_tr = lgb.Dataset(feature_matrix(train, tr, features), y_tr, weight=w, feature_name=list(features),
                       free_raw_data=True)
    d_va = lgb.Dataset(feature_matrix(valid, va, features), y_va, reference=d_tr)
    return _train(lgb, p, d_tr, d_va, params), int(tr.sum())


def _train(lgb: Any, p: dict[str, Any], d_tr: Any, d_va: Any, params: GBDTParams) -> Any:
    return lgb.train(p, d_tr, num_boost_round=params.max_rounds, valid_sets=[d_va],
                     callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])


def _predict(booster: Any, data: Mapping[str, np.ndarray], rows: np.ndarray, features: Sequence[str]) -> np.ndarray:
    return np.asarray(booster.predict(feature_matrix(data, rows, features), num_iteration=booster.best_iteration))


def task_predictions(score: Callable[[str, np.ndarray], np.ndarray], tasks: Collection[str],
                     data: Mapping[str, np.ndarray]) -> Predictions:
    """:class:`Predictions` of one split from per-task models: ``score(task, rows)`` gives the
    probabilities of the rows (a boolean mask) for ``ctr``, ``cvr`` and ``follow``, the ranking score for
    ``l2r`` and the (N, 7) tier probabilities for ``ppp``; ``tasks`` are the tasks with a model."""
    out = Predictions()
    if "ctr" in tasks:
        rows = task_rows(data, "ctr", False)
        p = score("ctr", rows)
        out.ctr = {"prob": p, "click": data["label_click"][rows], "buy": data["label_buy"][rows],
                   "user": data["user_id"][rows]}
        if "cvr" in tasks:
            cvr = score("cvr", rows)
            out.ctr["cvr_prob"] = cvr
            out.ctr["ctcvr_prob"] = p * cvr
    if "l2r" in tasks:
        rows = task_rows(data, "l2r", False)
        out.l2r = {"score": score("l2r", rows), "click": data["label_click"][rows], "gain": data["l2r_gain"][rows],
                   "list_id": data["list_id"][rows], "user": data["user_id"][rows]}
    if "follow" in tasks:
        rows = task_rows(data, "follow", False)
        out.follow = {"prob": score("follow", rows), "label": data["label_follow"][rows],
                      "user": data["user_id"][rows]}
    if "ppp" in tasks:
        rows = (np.asarray(data["task"]).astype(str) == "ppp") & (data["label_tier"] >= 0)
        out.ppp = {"probs": score("ppp", rows), "tier": data["label_tier"][rows], "ppp_user": data["ppp_user"][rows],
                   "user": data["user_id"][rows]}
    return out


def predictions(boosters: Mapping[str, Any], data: Mapping[str, np.ndarray],
                features: Mapping[str, Sequence[str]]) -> Predictions:
    """:class:`Predictions` of one split from the task boosters."""
    def score(task: str, rows: np.ndarray) -> np.ndarray:
        p = _predict(boosters[task], data, rows, features[task])
        return p.reshape(-1, 7) if task == "ppp" else p

    return task_predictions(score, boosters.keys(), data)


def run_gbdt(train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
             features: Mapping[str, Sequence[str]], tasks: Sequence[str], params: GBDTParams, seed: int) -> GBDTResult:
    """Train one booster per task on ``train`` (early stopping on ``valid``), then score ``valid`` and,
    once, ``test``.

    Args:
        features: task -> feature columns (``ctr``, ``cvr``, ``l2r``, ``follow``, ``ppp``).
        tasks: platform tasks (``ctr`` brings ``cvr`` along, for ESMM's outputs).
    """
    boosters: dict[str, Any] = {}
    rounds: dict[str, int] = {}
    started = time.perf_counter()
    examples = 0
    wanted = [t for t in ("ctr", "cvr", "l2r", "follow", "ppp") if t in tasks or (t == "cvr" and "ctr" in tasks)]
    for task in wanted:
        t0 = time.perf_counter()
        booster, n = _fit(task, train, valid, features[task], params, seed)
        boosters[task] = booster
        rounds[task] = int(booster.best_iteration or booster.current_iteration())
        if task != "cvr":
            examples += n
        logger.info("GBDT %s: %d examples, %d trees (early stopping on validation), %.1fs", task, n, rounds[task],
                    time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    importance = {t: sorted(zip(features[t], (float(x) for x in b.feature_importance("gain"))),
                            key=lambda kv: -kv[1])[:10] for t, b in boosters.items()}
    return GBDTResult(test=predictions(boosters, test, features), valid=predictions(boosters, valid, features),
                      rounds=rounds, train_seconds=seconds, train_examples=examples, importance=importance)


def heuristic_predictions(data: Mapping[str, np.ndarray], feature: str, tasks: Sequence[str]) -> Predictions:
    """:class:`Predictions` of one split that score every impression by one hand-crafted feature of
    ``features/gbdt_examples`` (a heuristic with nothing learned: e.g. ``item_events_prev``, the item's
    popularity on earlier days, or ``cat_decayed_share_1d``, how recently and often the user touched the
    target's category). A missing value scores below every present one (the features are >= 0).

    Only rankings are meaningful: the CTR ``prob`` is the score, not a probability (its log loss and
    calibration are not reported by :func:`heuristic_metrics`); CVR and CTCVR rank by the same score.
    """
    out = Predictions()

    def score(rows: np.ndarray) -> np.ndarray:
        x = np.asarray(data[feature], dtype=np.float64)[rows]
        return np.where(np.isnan(x), -1.0, x)

    if "ctr" in tasks:
        rows = task_rows(data, "ctr", False)
        s = score(rows)
        out.ctr = {"prob": s, "cvr_prob": s, "ctcvr_prob": s, "click": data["label_click"][rows],
                   "buy": data["label_buy"][rows], "user": data["user_id"][rows]}
    if "l2r" in tasks:
        rows = task_rows(data, "l2r", False)
        out.l2r = {"score": score(rows), "click": data["label_click"][rows], "gain": data["l2r_gain"][rows],
                   "list_id": data["list_id"][rows], "user": data["user_id"][rows]}
    return out


def heuristic_metrics(pred: Predictions) -> dict[str, float]:
    """The ranking metrics of :func:`heuristic_predictions` (no log loss or calibration: a score is not a
    probability)."""
    from training.evaluation import metrics

    return {k: v for k, v in metrics(pred).items()
            if k not in ("ctr_logloss", "ctr_ece", "ctr_mean_prob")}
