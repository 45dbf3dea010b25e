"""The evaluation protocol's scoring side: one module for every model, the comparison benchmark,
the transfer job and the promotion gate (the splits themselves: :mod:`core.protocol`).

* :class:`Predictions` — per-example predictions and labels of one split, per task, from any
  model (a torch model through :func:`predict`, the GBDT from its own arrays).
* :func:`metrics` — every test metric: AUC of CTR, of CVR over clicked impressions and of CTCVR
  over all of them (ESMM), calibration of the CTR probability (log loss, expected calibration
  error, mean prediction vs observed rate), L2R AUC and NDCG@10 per list, follow AUC, PPP
  accuracy and macro-F1 on the split's **unseen** users with the seen users' accuracy beside it.
* :func:`selection_score` — the one number model selection maximises on the validation split.
* :func:`paired_bootstrap` — the promotion gate's test: candidate minus champion on the same
  examples, resampled by user (a user's examples are correlated), with a confidence interval.
* :func:`summarize` / :func:`compare` — seeds: mean ± std, and whether a difference is noise.

Metrics that are undefined on the data (one class only, no example of a task) are NaN.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from core.protocol import PPP_TRAIN_USER

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

NAN = float("nan")
NDCG_K = 10
ECE_BINS = 20
# Metrics model selection averages (whichever the model has), and the promotion gate tests.
SELECTION_METRICS = ("ctr_auc", "ctcvr_auc", "l2r_auc", "follow_auc", "ppp_accuracy")
GATED_METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy")
# the headline metrics of tables, in order
REPORTED_METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy",
                    "ppp_accuracy_seen", "ppp_macro_f1", "ctr_logloss", "ctr_ece")


# ====================================================================== predictions of one split
@dataclass
class Predictions:
    """Per-example predictions and labels of one split, by task (numpy arrays of equal length per task).

    * ``ctr``: ``prob``, ``cvr_prob``, ``ctcvr_prob`` (when the model has ESMM), ``click``, ``buy``, ``user``;
    * ``l2r``: ``score``, ``click``, ``gain`` (graded relevance weight), ``list_id``, ``user``;
    * ``follow``: ``prob``, ``label``, ``user``;
    * ``ppp``: ``probs`` (N, 7), ``tier`` (0..6), ``ppp_user`` (label group), ``user``.
    """

    ctr: dict[str, np.ndarray] = field(default_factory=dict)
    l2r: dict[str, np.ndarray] = field(default_factory=dict)
    follow: dict[str, np.ndarray] = field(default_factory=dict)
    ppp: dict[str, np.ndarray] = field(default_factory=dict)

    def tasks(self) -> list[str]:
        return [t for t in ("ctr", "l2r", "follow", "ppp") if getattr(self, t)]

    def rows(self) -> dict[str, int]:
        return {t: len(next(iter(getattr(self, t).values()))) for t in self.tasks()}


class _Collector:
    """Accumulates per-batch arrays of each task and concatenates them once."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, task: str, **arrays: np.ndarray) -> None:
        bucket = self.parts.setdefault(task, {})
        for k, v in arrays.items():
            bucket.setdefault(k, []).append(np.asarray(v))

    def result(self) -> Predictions:
        out = Predictions()
        for task, cols in self.parts.items():
            setattr(out, task, {k: np.concatenate(v) for k, v in cols.items()})
        return out


def batch_predictions(outputs: Mapping[str, "Tensor"], batch: Mapping[str, "Tensor"], offsets: Mapping[str, float],
                      collector: _Collector) -> None:
    """Turn one batch's model outputs into per-example probabilities (applying the sampling offsets)
    and add them, with their labels, to ``collector``."""
    import torch

    from training.losses import slot_mask

    n_items = batch["n_items"]
    g = batch["label_click"].shape[1]
    mask = slot_mask(batch)
    users = batch["user_id"] if "user_id" in batch else torch.zeros_like(n_items)
    slot_users = users.unsqueeze(1).expand(-1, g)[mask].numpy()
    if "ctr_logit" in outputs:
        p = torch.sigmoid(outputs["ctr_logit"].detach() + offsets.get("ctr", 0.0))
        cols: dict[str, np.ndarray] = {"prob": p[mask].numpy(), "click": batch["label_click"][mask].numpy(),
                                       "buy": batch["label_buy"][mask].numpy(), "user": slot_users}
        if "cvr_logit" in outputs:
            cvr = torch.sigmoid(outputs["cvr_logit"].detach())
            cols["cvr_prob"] = cvr[mask].numpy()
            cols["ctcvr_prob"] = (p * cvr)[mask].numpy()
        collector.add("ctr", **cols)
    if "l2r_score" in outputs:
        lists = mask & (batch["l2r"] == 1).unsqueeze(1)
        list_ids = batch["list_id"] if "list_id" in batch else torch.zeros_like(n_items)
        collector.add("l2r", score=outputs["l2r_score"].detach()[lists].numpy(),
                      click=batch["label_click"][lists].numpy(), gain=batch["l2r_gain"][lists].numpy(),
                      list_id=list_ids.unsqueeze(1).expand(-1, g)[lists].numpy(),
                      user=users.unsqueeze(1).expand(-1, g)[lists].numpy())
    if "follow_logit" in outputs:
        from core.tables import KIND_IDS

        rows = batch["kind_id"] == KIND_IDS["follow"]
        collector.add("follow", prob=torch.sigmoid(outputs["follow_logit"].detach()[rows]
                                                   + offsets.get("follow", 0.0)).numpy(),
                      label=batch["label_follow"][rows].numpy(), user=users[rows].numpy())
    if "ppp_logits" in outputs:
        from core.tables import KIND_IDS

        rows = (batch["kind_id"] == KIND_IDS["ppp"]) & (batch["label_tier"] >= 0)
        collector.add("ppp", probs=torch.softmax(outputs["ppp_logits"].detach()[rows], dim=-1).numpy(),
                      tier=batch["label_tier"][rows].numpy(), ppp_user=batch["ppp_user"][rows].numpy(),
                      user=users[rows].numpy())


def predict(model: "nn.Module", batches: Iterable[Mapping[str, "Tensor"]],
            on_batch: Any = None) -> Predictions:
    """Eval-mode predictions of a :class:`training.model.TaskModel` over ``batches`` (one split).

    Args:
        on_batch: optional ``callable(outputs, batch)`` run on every batch (e.g. the attention analysis).
    """
    import torch

    spec = getattr(model, "spec", None)
    offsets = dict(spec.logit_offsets) if spec is not None else {}
    collector = _Collector()
    model.eval()
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            if on_batch is not None:
                on_batch(out, batch)
            batch_predictions(out, batch, offsets, collector)
    return collector.result()


# ====================================================================== metric functions
def _rank_groups(scores: np.ndarray) -> np.ndarray:
    """Index of each score's distinct value, in increasing order of value (ties share an index)."""
    return np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)[1].ravel()


def weighted_auc(groups: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC with ties counted one half, from :func:`_rank_groups` indices, optionally with example
    weights (the bootstrap's resampling counts). NaN with fewer than two classes."""
    y = np.asarray(labels).ravel() > 0.5
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = int(groups.max()) + 1 if len(groups) else 0
    pos = np.bincount(groups, weights=w * y, minlength=n)
    neg = np.bincount(groups, weights=w * ~y, minlength=n)
    p, q = pos.sum(), neg.sum()
    if p <= 0 or q <= 0:
        return NAN
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (p * q))


def auc(labels: np.ndarray, scores: np.ndarray, name: str = "auc") -> float:
    """ROC AUC of binary ``labels`` given ``scores``; NaN (logged) with fewer than two classes."""
    y = np.asarray(labels).ravel()
    if y.size == 0:
        logger.info("%s undefined: no rows", name)
        return NAN
    value = weighted_auc(_rank_groups(scores), y)
    if math.isnan(value):
        logger.info("%s undefined: all %d rows have one label", name, y.size)
    return value


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(labels) == 0:
        return NAN
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` bins cut at the quantiles of the predictions (about equal counts; equal
    predictions share a bin): Σ_b (n_b / N) |mean p_b - rate_b|.

    Quantile bins suit CTR, whose predictions crowd near zero."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    n = len(p)
    if n == 0:
        return NAN
    edges = np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1])
    idx = np.searchsorted(edges, p, side="right")
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=p, minlength=bins) - np.bincount(idx, weights=y, minlength=bins))
    return float(gap.sum() / n) if count.sum() else NAN


def ndcg_per_list(list_ids: np.ndarray, relevance: np.ndarray, scores: np.ndarray, k: int = NDCG_K) \
        -> tuple[np.ndarray, np.ndarray]:
    """NDCG@k (linear gains, DCG = Σ rel_i / log2(i + 1)) of every informative list.

    Rows sharing a list id form one ranked list sorted by descending score (ties keep input order).
    Lists whose rows all have the same relevance rank nothing and are skipped.

    Returns:
        (ndcg of each informative list, the index of its first row in the input).
    """
    g = np.asarray(list_ids).ravel()
    rel = np.asarray(relevance, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (g.size == rel.size == s.size):
        raise ValueError(f"list ids, relevance and scores differ in length ({g.size}, {rel.size}, {s.size})")
    if g.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    _, first, gidx = np.unique(g, return_index=True, return_inverse=True)
    gidx = gidx.ravel()
    n_groups = len(first)

    def dcg(order: np.ndarray) -> np.ndarray:
        grp = gidx[order]
        starts = np.searchsorted(grp, np.arange(n_groups))
        rank = np.arange(grp.size) - starts[grp]
        gain = np.where(rank < k, rel[order] / np.log2(rank + 2.0), 0.0)
        return np.bincount(grp, weights=gain, minlength=n_groups)

    actual = dcg(np.lexsort((-s, gidx)))
    ideal = dcg(np.lexsort((-rel, gidx)))
    rel_min = np.full(n_groups, np.inf)
    rel_max = np.full(n_groups, -np.inf)
    np.minimum.at(rel_min, gidx, rel)
    np.maximum.at(rel_max, gidx, rel)
    informative = (rel_max > rel_min) & (ideal > 0)
    return actual[informative] / ideal[informative], first[informative]


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    classes = np.union1d(labels, pred)
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else NAN


def metrics(pred: Predictions) -> dict[str, float]:
    """Every metric ``pred`` allows (see the module docstring), plus ``<task>_rows``."""
    out: dict[str, float] = {}
    c = pred.ctr
    if c:
        click = c["click"]
        out["ctr_rows"] = float(len(click))
        out["ctr_auc"] = auc(click, c["prob"], "ctr_auc")
        out["ctr_logloss"] = log_loss(click, c["prob"])
        out["ctr_ece"] = expected_calibration_error(click, c["prob"])
        out["ctr_mean_prob"] = float(np.mean(c["prob"])) if len(click) else NAN
        out["ctr_rate"] = float(np.mean(click)) if len(click) else NAN
        if "ctcvr_prob" in c:
            clicked = click > 0.5
            out["cvr_auc"] = auc(c["buy"][clicked], c["cvr_prob"][clicked], "cvr_auc")
            out["ctcvr_auc"] = auc(c["buy"], c["ctcvr_prob"], "ctcvr_auc")
    r = pred.l2r
    if r:
        out["l2r_rows"] = float(len(r["click"]))
        out["l2r_auc"] = auc(r["click"], r["score"], "l2r_auc")
        values, _ = ndcg_per_list(r["list_id"], r["gain"] * r["click"], r["score"])
        out[f"l2r_ndcg{NDCG_K}"] = float(values.mean()) if len(values) else NAN
        out["l2r_lists"] = float(len(values))
    f = pred.follow
    if f:
        out["follow_rows"] = float(len(f["label"]))
        out["follow_auc"] = auc(f["label"], f["prob"], "follow_auc")
        out["follow_logloss"] = log_loss(f["label"], f["prob"])
    p = pred.ppp
    if p:
        guess = p["probs"].argmax(axis=1)
        correct = guess == p["tier"]
        unseen = p["ppp_user"] != PPP_TRAIN_USER
        out["ppp_rows"] = float(unseen.sum())
        out["ppp_rows_seen"] = float((~unseen).sum())
        out["ppp_accuracy"] = float(correct[unseen].mean()) if unseen.any() else NAN
        out["ppp_macro_f1"] = macro_f1(p["tier"][unseen], guess[unseen]) if unseen.any() else NAN
        out["ppp_accuracy_seen"] = float(correct[~unseen].mean()) if (~unseen).any() else NAN
    return out


# the rows each selection metric is scored on (``metrics``' ``<task>_rows``)
SELECTION_ROWS = {"ctr_auc": "ctr_rows", "ctcvr_auc": "ctr_rows", "l2r_auc": "l2r_rows",
                  "follow_auc": "follow_rows", "ppp_accuracy": "ppp_rows"}


def selection_score(values: Mapping[str, float], min_rows: int = 0) -> float:
    """Mean of the :data:`SELECTION_METRICS` the model has (NaN ones left out); NaN if none.

    With ``min_rows``, a metric scored on fewer rows is left out as long as another metric has that
    many: on the demo world's validation day PPP accuracy rests on about 300 unseen users (a standard
    error near 0.025), and weighed like the AUCs of 10k-100k rows it chose the checkpoint by noise
    (docs/evaluation.md)."""
    got = [k for k in SELECTION_METRICS if k in values and not math.isnan(float(values[k]))]
    if min_rows:
        big = [k for k in got if float(values.get(SELECTION_ROWS[k], math.inf)) >= min_rows]
        got = big or got
    return finite_mean(values, got)


def finite_mean(values: Mapping[str, float], names: Sequence[str]) -> float:
    """Mean of the metrics ``names`` that ``values`` has and that are not NaN; NaN if none."""
    got = [float(values[k]) for k in names if k in values and not math.isnan(float(values[k]))]
    return float(np.mean(got)) if got else NAN


# ====================================================================== paired bootstrap
@dataclass(frozen=True)
class Interval:
    """Candidate minus champion of one metric: the full-sample difference and its bootstrap interval."""

    metric: str
    candidate: float
    champion: float
    delta: float
    low: float
    high: float

    @property
    def worse(self) -> bool:
        """Worse beyond the interval: even its upper bound is below zero."""
        return self.high < 0

    def describe(self) -> str:
        return f"{self.metric} {self.delta:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


class _MetricSampler:
    """One metric of one model's predictions, recomputable under per-user resampling weights."""

    def __init__(self, name: str, pred: Predictions, users: np.ndarray):
        self.name = name
        kind, arrays = self._arrays(name, pred)
        self.kind = kind
        self.valid = arrays is not None
        if arrays is None:
            return
        self.user_index = np.searchsorted(users, arrays.pop("user"))
        self.arrays = arrays
        if kind == "auc":
            self.groups = _rank_groups(arrays["score"])

    @staticmethod
    def _arrays(name: str, pred: Predictions) -> tuple[str, dict[str, np.ndarray] | None]:
        c, r, f, p = pred.ctr, pred.l2r, pred.follow, pred.ppp
        if name == "ctr_auc" and c:
            return "auc", {"score": c["prob"], "label": c["click"], "user": c["user"]}
        if name == "ctcvr_auc" and c and "ctcvr_prob" in c:
            return "auc", {"score": c["ctcvr_prob"], "label": c["buy"], "user": c["user"]}
        if name == "cvr_auc" and c and "cvr_prob" in c:
            clicked = c["click"] > 0.5
            return "auc", {"score": c["cvr_prob"][clicked], "label": c["buy"][clicked], "user": c["user"][clicked]}
        if name == "l2r_auc" and r:
            return "auc", {"score": r["score"], "label": r["click"], "user": r["user"]}
        if name == "l2r_ndcg10" and r:
            values, first = ndcg_per_list(r["list_id"], r["gain"] * r["click"], r["score"])
            return "mean", {"value": values, "user": r["user"][first]}
        if name == "follow_auc" and f:
            return "auc", {"score": f["prob"], "label": f["label"], "user": f["user"]}
        if name == "ppp_accuracy" and p:
            unseen = p["ppp_user"] != PPP_TRAIN_USER
            correct = (p["probs"].argmax(axis=1) == p["tier"]).astype(np.float64)
            return "mean", {"value": correct[unseen], "user": p["user"][unseen]}
        return "none", None

    def value(self, user_weights: np.ndarray | None = None) -> float:
        if not self.valid:
            return NAN
        w = None if user_weights is None else user_weights[self.user_index]
        if self.kind == "auc":
            return weighted_auc(self.groups, self.arrays["label"], w)
        v = self.arrays["value"]
        if len(v) == 0:
            return NAN
        if w is None:
            return float(v.mean())
        total = w.sum()
        return float((w * v).sum() / total) if total > 0 else NAN


def _users(*preds: Predictions) -> np.ndarray:
    parts = [d["user"] for p in preds for d in (p.ctr, p.l2r, p.follow, p.ppp) if d and "user" in d]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def paired_bootstrap(candidate: Predictions, champion: Predictions, resamples: int = 400,
                     confidence: float = 0.95, seed: int = 0,
                     names: Sequence[str] = GATED_METRICS) -> list[Interval]:
    """Candidate minus champion of each metric both have, on the same examples.

    Each resample draws a Poisson(1) weight per **user** (all of a user's examples move together,
    as they are correlated) and recomputes both models' metrics under the same weights; the
    interval is the percentile interval of the differences at ``confidence``.
    """
    users = _users(candidate, champion)
    rng = np.random.default_rng(seed)
    pairs = []
    for name in names:
        a, b = _MetricSampler(name, candidate, users), _MetricSampler(name, champion, users)
        if a.valid and b.valid:
            va, vb = a.value(), b.value()
            if not (math.isnan(va) or math.isnan(vb)):
                pairs.append((name, a, b, va, vb))
    deltas = {name: np.empty(resamples) for name, *_ in pairs}
    for i in range(resamples):
        w = rng.poisson(1.0, len(users)).astype(np.float64)
        for name, a, b, _, _ in pairs:
            deltas[name][i] = a.value(w) - b.value(w)
    out = []
    for name, _, _, va, vb in pairs:
        lo, hi = percentile_interval(deltas[name], confidence)
        out.append(Interval(name, va, vb, va - vb, lo, hi))
    return out


def percentile_interval(deltas: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap differences (NaN ones left out)."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not len(d):
        return NAN, NAN
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))


# ====================================================================== seeds
@dataclass(frozen=True)
class Summary:
    """A metric over seeds."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    def describe(self, digits: int = 4) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "–"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def summarize(values: Iterable[float]) -> Summary:
    """Mean and sample standard deviation (ddof 1) of the finite values."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return Summary(NAN, NAN, 0, ())
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return Summary(float(np.mean(v)), std, len(v), tuple(v))


def within_noise(a: Summary, b: Summary) -> bool:
    """True when the difference of two seed summaries is within noise: |Δ mean| is at most twice its
    standard error, sqrt(std_a²/n_a + std_b²/n_b) (single-seed runs are always noise)."""
    if a.n < 2 or b.n < 2:
        return True
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    return abs(a.mean - b.mean) <= 2.0 * se


def compare(a: Summary, b: Summary) -> str:
    """``>``, ``<`` or ``≈`` (within noise) for a vs b."""
    if math.isnan(a.mean) or math.isnan(b.mean):
        return "?"
    if within_noise(a, b):
        return "≈"
    return ">" if a.mean > b.mean else "<"


def iter_metric_rows(results: Iterable[Mapping[str, float]], names: Sequence[str] = REPORTED_METRICS) \
        -> Iterator[tuple[str, Summary]]:
    rows = list(results)
    for name in names:
        yield name, summarize(r.get(name, NAN) for r in rows)
