"""A neural network on the GBDT's hand-crafted features: the same inputs as the trees, another model class.

It answers one question about the comparison: when DUPN trails the GBDT on a task, is the lead in the
*features* (what the hand-crafted point-in-time columns say that DUPN's heads do not see), or in the
*model class* (what boosted trees make of the same columns that a network does not)? An MLP reading
exactly the trees' columns, trained and selected under the same protocol, separates the two: if it
matches the trees, the information is there for a network to use; if it falls short by about as
much as DUPN, the lead is the trees' own.

One network per task, as the GBDT has one booster per task (:mod:`training.gbdt`), on the same rows
(:func:`training.gbdt.task_rows`) of ``features/gbdt_examples``:

* every numeric column enters through the piecewise-linear encoding with knots at its training
  quantiles (:func:`training.tabular.pieces`; Gorishniy et al. 2022, the encoding that makes MLPs
  competitive with trees on tabular data), plus a missing-value indicator where the training rows
  have gaps; ``target_category`` through an embedding;
* ``ctr`` and ``follow``: binary cross-entropy with the sampling weights; ``cvr``: binary on the
  clicked impressions, ``ctcvr_prob = p_ctr · p_cvr`` as in ESMM; ``l2r``: the listwise softmax
  cross-entropy of each list's graded gains; ``ppp``: 7-class cross-entropy on the training users;
* epochs chosen by early stopping on the validation split with the GBDT's metrics (AUC, NDCG@10,
  accuracy), the best epoch's weights kept, the test split scored once.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from training.evaluation import NDCG_K, Predictions, auc, ndcg_per_list
from training.gbdt import GBDTResult, GRADE, feature_matrix, task_predictions, task_rows
from training.modules import ramps
from training.progress import Progress
from training.step import prepare_torch
from training.tabular import pieces

logger = logging.getLogger(__name__)

CATEGORICAL = ("target_category",)
TASKS = ("ctr", "cvr", "l2r", "follow", "ppp")


@dataclass(frozen=True)
class FeatureMLPParams:
    """The networks' settings (the same for every task)."""

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    bins: int = 16                # quantile pieces per numeric column
    category_dim: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 512         # rows per step (l2r: lists per step)
    max_epochs: int = 30
    patience: int = 3             # epochs without a better validation score before stopping
    threads: int = 1


class FeatureEncoder(nn.Module):
    """Numeric columns -> piecewise-linear pieces ‖ missing indicators; categorical -> embeddings.

    The knots are the training rows' quantiles of each column (NaN left out), or those ``knots`` gives for
    a column (a diagnostic: e.g. one piece from its least to its largest value, a scalar input). A NaN value
    gives all its column's pieces 0 and its indicator 1; a column without knots (constant in training) adds
    nothing.
    """

    piece_column: Tensor
    piece_low: Tensor
    piece_width: Tensor
    missing_column: Tensor

    def __init__(self, x_train: np.ndarray, features: Sequence[str], bins: int, category_dim: int,
                 knots: Mapping[str, Sequence[float]] | None = None) -> None:
        super().__init__()
        self.numeric = [j for j, f in enumerate(features) if f not in CATEGORICAL]
        self.categorical = [j for j, f in enumerate(features) if f in CATEGORICAL]
        edges: list[list[float]] = []
        for j in self.numeric:
            if knots and features[j] in knots:  # fixed knots instead of the training quantiles
                edges.append([float(e) for e in knots[features[j]]])
                continue
            col = x_train[:, j]
            col = col[np.isfinite(col)]
            q = np.unique(np.quantile(col, np.linspace(0.0, 1.0, bins + 1))) if len(col) else np.zeros(0)
            edges.append([float(e) for e in q])
        column, low, width = pieces(edges)
        self.register_buffer("piece_column", torch.as_tensor(column))
        self.register_buffer("piece_low", torch.as_tensor(low))
        self.register_buffer("piece_width", torch.as_tensor(width))
        gaps = [i for i, j in enumerate(self.numeric) if np.isnan(x_train[:, j]).any()]
        self.register_buffer("missing_column", torch.as_tensor(gaps, dtype=torch.int64))
        self.tables = nn.ModuleList()
        self.unseen: list[int] = []  # each table's last row: a category unseen in training, or missing
        for j in self.categorical:
            col = x_train[:, j]
            top = int(np.nanmax(col)) if np.isfinite(col).any() else 0
            self.tables.append(nn.Embedding(top + 2, category_dim))
            self.unseen.append(top + 1)
        self.out_dim = len(column) + len(gaps) + category_dim * len(self.categorical)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F) float32 with NaN for missing -> (B, out_dim)."""
        num = x[:, self.numeric]
        missing = torch.isnan(num)
        filled = torch.where(missing, torch.full_like(num, -math.inf), num)
        parts = [ramps(filled[:, self.piece_column], self.piece_low, self.piece_width),
                 missing[:, self.missing_column].float()]
        for table, j, unseen in zip(self.tables, self.categorical, self.unseen):
            raw = x[:, j]
            idx = torch.where(torch.isnan(raw) | (raw < 0) | (raw >= unseen), torch.full_like(raw, unseen), raw).long()
            parts.append(table(idx))
        return torch.cat(parts, dim=1)


class FeatureMLP(nn.Module):
    """:class:`FeatureEncoder` -> ReLU layers with dropout -> ``outputs`` logits."""

    def __init__(self, encoder: FeatureEncoder, outputs: int, params: FeatureMLPParams) -> None:
        super().__init__()
        self.encoder = encoder
        layers: list[nn.Module] = []
        width = encoder.out_dim
        for h in params.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(params.dropout)]
            width = h
        layers.append(nn.Linear(width, outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.encoder(x))


def _lists(data: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The rows ``idx`` grouped by list id: (lists, longest) row indices, -1 as padding."""
    idx = idx[np.argsort(data["list_id"][idx], kind="stable")]
    _, first, counts = np.unique(data["list_id"][idx], return_index=True, return_counts=True)
    out = np.full((len(first), int(counts.max()) if len(counts) else 0), -1, dtype=np.int64)
    pos = np.arange(len(idx)) - np.repeat(first, counts)
    out[np.repeat(np.arange(len(first)), counts), pos] = idx
    return out


@dataclass
class _TaskData:
    """One task's rows of one split: features, targets and (l2r) list layout."""

    x: np.ndarray                  # (N, F)
    y: np.ndarray                  # (N,) label, tier or gain
    w: np.ndarray                  # (N,) training weight
    rows: np.ndarray               # the split's row indices, in the order of x
    lists: np.ndarray | None = None  # l2r: (lists, longest) positions into x, -1 padding


def _task_data(task: str, data: Mapping[str, np.ndarray], features: Sequence[str], training: bool) -> _TaskData:
    idx = np.flatnonzero(task_rows(data, task, training))
    if task == "l2r":
        grid = _lists(data, idx)
        idx = grid[grid >= 0]
        positions = np.where(grid >= 0, np.cumsum(grid >= 0).reshape(grid.shape) - 1, -1)
        gains = np.array([GRADE.get(float(g), 3) for g in data["l2r_gain"][idx] * data["label_click"][idx]],
                         dtype=np.float32)
        return _TaskData(feature_matrix(data, idx, features), gains, np.ones(len(idx), np.float32), idx, positions)
    label = {"ctr": "label_click", "cvr": "label_buy", "follow": "label_follow", "ppp": "label_tier"}[task]
    weight = {"ctr": "ctr_weight", "cvr": "ctr_weight", "follow": "follow_weight"}.get(task)
    w = np.asarray(data[weight], np.float32)[idx] if weight else np.ones(len(idx), np.float32)
    return _TaskData(feature_matrix(data, idx, features), np.asarray(data[label])[idx], w, idx)


def _loss(task: str, model: FeatureMLP, d: _TaskData, batch: np.ndarray) -> Tensor:
    if task == "l2r":
        grid = d.lists[batch]  # type: ignore[index]
        valid = grid >= 0
        flat = grid[valid]
        logits = torch.full(grid.shape, -1e9)
        logits[torch.as_tensor(valid)] = model(torch.as_tensor(d.x[flat])).squeeze(1)
        gain = torch.zeros(grid.shape)
        gain[torch.as_tensor(valid)] = torch.as_tensor((2.0 ** d.y[flat]) - 1.0)
        target = gain / gain.sum(dim=1, keepdim=True).clamp_min(1e-9)
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    logits = model(torch.as_tensor(d.x[batch]))
    if task == "ppp":
        return nn.functional.cross_entropy(logits, torch.as_tensor(d.y[batch]).long())
    w = torch.as_tensor(d.w[batch])
    bce = nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), torch.as_tensor(d.y[batch]).float(),
                                                         reduction="none")
    return (bce * w).sum() / w.sum().clamp_min(1e-9)


def _scores(model: FeatureMLP, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Logits (N,) or (N, K) of ``x`` in evaluation mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out.append(model(torch.as_tensor(x[s:s + batch])).numpy())
    model.train()
    arr = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return arr[:, 0] if arr.shape[1] == 1 else arr


def _validation_score(task: str, d: _TaskData, data: Mapping[str, np.ndarray], s: np.ndarray) -> float:
    """The GBDT's early-stopping metric of one task on the validation rows (higher is better)."""
    if task == "l2r":
        values, _ = ndcg_per_list(data["list_id"][d.rows], data["l2r_gain"][d.rows] * data["label_click"][d.rows], s,
                                  NDCG_K)
        return float(values.mean()) if len(values) else math.nan
    if task == "ppp":
        return float((s.argmax(axis=1) == d.y).mean()) if len(d.y) else math.nan
    return auc(d.y, s, f"{task}_auc")


def fit_task(task: str, train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], features: Sequence[str],
             params: FeatureMLPParams, seed: int, knots: Mapping[str, Sequence[float]] | None = None) \
        -> tuple[FeatureMLP, int, int]:
    """Train ``task``'s network on ``train``, keeping the epoch best on ``valid``: (model, epochs chosen, rows).
    ``knots``: fixed knots of some columns (:class:`FeatureEncoder`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr = _task_data(task, train, features, True)
    va = _task_data(task, valid, features, False)
    encoder = FeatureEncoder(tr.x, features, params.bins, params.category_dim, knots)
    model = FeatureMLP(encoder, 7 if task == "ppp" else 1, params)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    units = len(tr.lists) if tr.lists is not None else len(tr.x)
    steps = max(math.ceil(units / params.batch_size), 1)
    best, best_state, best_epoch, waited = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    progress = Progress(f"feature MLP {task}", steps * params.max_epochs,
                        unit="lists" if task == "l2r" else "rows")
    for epoch in range(1, params.max_epochs + 1):
        order = rng.permutation(units)
        for s in range(steps):
            batch = order[s * params.batch_size:(s + 1) * params.batch_size]
            loss = _loss(task, model, tr, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            progress.update(len(batch), {"loss": float(loss.detach())})
        score = _validation_score(task, va, valid, _scores(model, va.x))
        logger.info("feature MLP %s: epoch %d, validation %.4f (best %.4f at epoch %d)", task, epoch, score,
                    max(best, score), epoch if score > best else best_epoch)
        if score > best:
            best, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= params.patience:
                break
    progress.close()
    model.load_state_dict(best_state)
    model.eval()
    return model, best_epoch, len(tr.x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def predictions(models: Mapping[str, FeatureMLP], data: Mapping[str, np.ndarray],
                features: Mapping[str, Sequence[str]]) -> Predictions:
    """:class:`Predictions` of one split from the task networks (the rows and order of
    :func:`training.gbdt.predictions`)."""
    def score(task: str, rows: np.ndarray) -> np.ndarray:
        z = _scores(models[task], feature_matrix(data, rows, features[task]))
        if task == "l2r":
            return z
        if task == "ppp":
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return z / z.sum(axis=1, keepdims=True)
        return _sigmoid(z)

    return task_predictions(score, models.keys(), data)


def run_feature_mlp(train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    features: Mapping[str, Sequence[str]], tasks: Sequence[str], params: FeatureMLPParams,
                    seed: int, on_task: Callable[[str, int], None] | None = None,
                    knots: Mapping[str, Sequence[float]] | None = None) -> GBDTResult:
    """Train one network per task on ``train`` (epochs chosen on ``valid``), then score ``valid`` and,
    once, ``test``: :class:`training.gbdt.GBDTResult` with the epochs chosen per task in ``rounds``.

    Args:
        features: task -> feature columns (``ctr``, ``cvr``, ``l2r``, ``follow``, ``ppp``).
        tasks: platform tasks (``ctr`` brings ``cvr`` along, for ESMM's outputs).
        knots: fixed knots of some columns instead of their training quantiles (:class:`FeatureEncoder`).
    """
    prepare_torch(params.threads)
    models: dict[str, FeatureMLP] = {}
    epochs: dict[str, int] = {}
    started = time.perf_counter()
    examples = 0
    wanted = [t for t in TASKS if t in tasks or (t == "cvr" and "ctr" in tasks)]
    for task in wanted:
        t0 = time.perf_counter()
        models[task], epochs[task], n = fit_task(task, train, valid, features[task], params, seed, knots)
        if task != "cvr":
            examples += n
        logger.info("feature MLP %s: %d rows, epoch %d chosen on validation, %.1fs", task, n, epochs[task],
                    time.perf_counter() - t0)
        if on_task is not None:
            on_task(task, epochs[task])
    seconds = time.perf_counter() - started
    return GBDTResult(test=predictions(models, test, features), valid=predictions(models, valid, features),
                      rounds=epochs, train_seconds=seconds, train_examples=examples)
