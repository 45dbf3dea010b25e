"""Multi-task models on an ordinary feature table (``features/tabular_<name>``, :mod:`features.tabular`).

The input is one embedding per categorical column (``cat``, (B, C) ids) and the standardised dense
columns (``dense``, (B, D)), plus, when the encoding has dense bin edges (``tabular.dense_bins``), each
dense value's piecewise-linear encoding over its column's bins; the multi-task design is one of the
platform's :class:`training.model.TaskMixer` designs (shared-bottom, MMoE, CGC, PLE, cross-stitch); each
task has a tower MLP and one logit (binary) or one per class (multiclass). :class:`TabularWorkload` is
what :func:`training.trainer.train_process` needs to train it: the readers, the losses and the
validation metrics. Single-task is a model with one task.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TabularConfig, TrainingConfig
from core.errors import ConfigError, PlatformError
from training import evaluation as ev
from training.data import Batch, PetastormSource
from training.model import PLE, CrossStitch, ExtractionLayer, MMoE, SharedBottom, TaskMixer, TaskModel
from training.modules import mlp, ramps

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

KIND = "tabular"
FIELDS = ("cat", "dense", "labels")
ARCHITECTURES = ("shared_bottom", "mmoe", "cgc", "ple", "cross_stitch")


@dataclass(frozen=True)
class TabularSpec:
    """Everything that builds a tabular model, JSON-able (stored with every model).

    Attributes:
        name: the dataset (``tabular.name``).
        encoding: :meth:`features.tabular.Encoding.to_dict` of its training split (vocabularies, dense
            statistics, label definitions), so serving encodes raw rows as training did.
        tasks: the trained tasks (a subset of the encoding's, in its order).
        architecture, num_experts, num_task_experts, expert_dim, ple_levels, dropout: the design
            (``training.model``'s keys).
        embedding_dim, bottom_hidden, tower_hidden: sizes (``tabular``'s keys).
    """

    name: str
    encoding: dict[str, Any]
    tasks: tuple[str, ...]
    architecture: str = "shared_bottom"
    num_experts: int = 4
    num_task_experts: int = 1
    expert_dim: int = 128
    ple_levels: int = 2
    dropout: float = 0.1
    embedding_dim: int = 8
    bottom_hidden: tuple[int, ...] = (256, 128)
    tower_hidden: tuple[int, ...] = (64,)
    kind: str = field(default=KIND)

    def __post_init__(self) -> None:
        defined = [x["name"] for x in self.encoding["tasks"]]
        unknown = [x for x in self.tasks if x not in defined]
        if not self.tasks or unknown:
            raise ConfigError(f"tabular model tasks {list(self.tasks)}: unknown {unknown} (the table has {defined})")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"training.model.architecture '{self.architecture}' is not one of {ARCHITECTURES}")

    @staticmethod
    def from_config(tab: TabularConfig, training: TrainingConfig, encoding: Mapping[str, Any],
                    tasks: Sequence[str] | None = None) -> "TabularSpec":
        m = training.model
        return TabularSpec(name=tab.name, encoding=dict(encoding),
                           tasks=tuple(tasks) if tasks is not None else tuple(x.name for x in tab.tasks),
                           architecture=m.architecture, num_experts=m.num_experts,
                           num_task_experts=m.num_task_experts, expert_dim=m.expert_dim, ple_levels=m.ple_levels,
                           dropout=m.dropout, embedding_dim=tab.embedding_dim, bottom_hidden=tuple(tab.bottom_hidden),
                           tower_hidden=tuple(tab.tower_hidden))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tasks"], out["bottom_hidden"], out["tower_hidden"] = \
            list(self.tasks), list(self.bottom_hidden), list(self.tower_hidden)
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "TabularSpec":
        if data.get("kind") != KIND:
            raise ConfigError(f"not a tabular model spec (kind {data.get('kind')!r})")
        values = dict(data)
        for key in ("tasks", "bottom_hidden", "tower_hidden"):
            values[key] = tuple(values[key])
        return TabularSpec(**values)

    # --------------------------------------------------------------- derived
    @property
    def task_defs(self) -> list[dict[str, Any]]:
        """The definitions of the trained tasks."""
        by_name = {x["name"]: x for x in self.encoding["tasks"]}
        return [by_name[x] for x in self.tasks]

    @property
    def label_index(self) -> dict[str, int]:
        """Task -> its column of the ``labels`` array."""
        return {x["name"]: i for i, x in enumerate(self.encoding["tasks"])}

    @property
    def loss_names(self) -> tuple[str, ...]:
        return self.tasks

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.tasks

    def outputs(self, task: dict[str, Any]) -> int:
        return 1 if task["kind"] == "binary" else len(task["classes"])


def pieces(edges: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The piecewise-linear encoding's pieces of dense columns with bin ``edges`` (one increasing list
    per column, :attr:`features.tabular.Encoding.edges`): each piece's column, lower edge and width."""
    column, low, width = [], [], []
    for j, values in enumerate(edges):
        e = np.asarray(values, dtype=np.float32)
        column += [j] * max(len(e) - 1, 0)
        low += list(e[:-1])
        width += list(e[1:] - e[:-1])
    return np.asarray(column, dtype=np.int64), np.asarray(low, dtype=np.float32), np.asarray(width, dtype=np.float32)


class TabularModel(TaskModel):
    """Embeddings + dense -> a multi-task design -> one tower per task.

    ``forward(batch)`` takes ``cat`` (B, C) int64 and ``dense`` (B, D) float32 and returns
    ``representation`` (B, R) (the embedded input, or the shared bottom's output for shared-bottom)
    and ``logit_<task>``: (B,) for a binary task, (B, K) for a multiclass one.

    With bin edges e_0 < ... < e_k of a dense column, its value x also enters as k numbers, piece i
    being clamp((x - e_i) / (e_(i+1) - e_i), 0, 1): 1 for the pieces below x, x's fraction of its own
    piece, 0 above (the piecewise-linear encoding of Gorishniy et al., "On Embeddings for Numerical
    Features in Tabular Deep Learning", 2022). A linear layer on it is any piecewise-linear function
    of x with knots at the training quantiles.
    """

    spec: TabularSpec  # type: ignore[assignment]
    offsets: Tensor
    piece_column: Tensor
    piece_low: Tensor
    piece_width: Tensor

    def __init__(self, spec: TabularSpec) -> None:
        super().__init__()
        self.spec = spec
        enc = spec.encoding
        sizes = [2 + len(enc["vocab"][c]) for c in enc["categorical"]]
        # one table for every column (column j's ids start at offsets[j]): one lookup per batch
        self.embedding = nn.Embedding(max(sum(sizes), 1), spec.embedding_dim)
        self.register_buffer("offsets", torch.as_tensor(np.cumsum([0, *sizes[:-1]]), dtype=torch.int64),
                             persistent=False)
        column, low, width = pieces(enc.get("edges", []))
        self.register_buffer("piece_column", torch.as_tensor(column, dtype=torch.int64), persistent=False)
        self.register_buffer("piece_low", torch.as_tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("piece_width", torch.as_tensor(width, dtype=torch.float32), persistent=False)
        in_dim = len(sizes) * spec.embedding_dim + len(enc["dense"]) + len(column)
        if in_dim == 0:
            raise ConfigError("a tabular model needs at least one categorical or dense column")
        heads = spec.head_names
        self.bottom: nn.Module = nn.Identity()
        mixer: TaskMixer
        if spec.architecture == "shared_bottom":
            hidden = list(spec.bottom_hidden)
            if hidden:
                self.bottom = nn.Sequential(mlp(in_dim, hidden[:-1], hidden[-1], spec.dropout), nn.ReLU())
            mixer = SharedBottom(hidden[-1] if hidden else in_dim, heads)
        elif spec.architecture == "mmoe":
            mixer = MMoE(in_dim, heads, spec.num_experts, spec.expert_dim)
        elif spec.architecture in ("cgc", "ple"):
            levels = 1 if spec.architecture == "cgc" else spec.ple_levels
            mixer = PLE(in_dim, heads, levels, spec.num_experts, spec.num_task_experts, spec.expert_dim)
        else:
            mixer = CrossStitch(in_dim, heads, spec.expert_dim, spec.dropout)
        self.mixer = mixer
        self.towers = nn.ModuleDict({x["name"]: mlp(mixer.out_dim, list(spec.tower_hidden), spec.outputs(x),
                                                    spec.dropout) for x in spec.task_defs})
        self._in_dim = in_dim

    @property
    def embedding_dim(self) -> int:
        return self._in_dim

    def embed(self, cat: Tensor, dense: Tensor) -> Tensor:
        """(B, C) ids and (B, D) values -> (B, C * E + D + P), P the dense columns' pieces (0 without bins)."""
        parts = [self.embedding(cat + self.offsets).flatten(1)] if cat.shape[1] else []
        if dense.shape[1]:
            parts.append(dense)
        if len(self.piece_column):
            x = dense.index_select(1, self.piece_column)
            parts.append(ramps(x, self.piece_low, self.piece_width))
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        x = self.bottom(self.embed(batch["cat"], batch["dense"]))
        per_head = self.mixer(x)
        out = {"representation": x}
        for t in self.spec.task_defs:
            logit = self.towers[t["name"]](per_head[t["name"]])
            out[f"logit_{t['name']}"] = logit.squeeze(1) if t["kind"] == "binary" else logit
        return out

    def shared_parameters(self) -> list[Tensor]:
        """GradNorm's shared layer: the bottom's last linear layer (shared-bottom), the shared experts'
        (MMoE, CGC, PLE's first level) or the cross-stitch units."""
        if self.spec.architecture == "shared_bottom":
            linears = [m for m in self.bottom.modules() if isinstance(m, nn.Linear)]
            if linears:
                return [linears[-1].weight]
            return [self.embedding.weight]
        if isinstance(self.mixer, MMoE):
            return [p for e in self.mixer.experts for p in e.parameters() if p.dim() == 2]
        if isinstance(self.mixer, PLE):
            first = cast(ExtractionLayer, self.mixer.levels[0])
            return [p for e in first.shared for p in e.parameters() if p.dim() == 2]
        return [p for n, p in self.mixer.named_parameters() if n.startswith("stitch")]


# ---------------------------------------------------------------------- losses and metrics
def tabular_losses(spec: TabularSpec, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                   names: Iterable[str]) -> dict[str, Tensor]:
    """Mean cross-entropy of each task in ``names`` over the batch."""
    index = spec.label_index
    by_name = {x["name"]: x for x in spec.task_defs}
    out: dict[str, Tensor] = {}
    for name in names:
        y = batch["labels"][:, index[name]]
        logit = outputs[f"logit_{name}"]
        if by_name[name]["kind"] == "binary":
            out[name] = F.binary_cross_entropy_with_logits(logit, y.float())
        else:
            out[name] = F.cross_entropy(logit, y.long())
    return out


def tabular_counts(batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]:
    """Every row holds every label."""
    n = int(batch["labels"].shape[0])
    return {name: n for name in names}


@dataclass
class TabularPredictions:
    """Labels and predicted probabilities of one split, per task."""

    labels: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]


def predict(model: nn.Module, batches: Iterable[Batch]) -> TabularPredictions:
    """Probabilities of every task (binary: P(positive), (N,); multiclass: (N, K)) over ``batches`` of a
    :class:`TabularModel`."""
    if not isinstance(model, TabularModel):
        raise TypeError(f"expected a TabularModel, got {type(model).__name__}")
    spec = model.spec
    index = spec.label_index
    labels: dict[str, list[np.ndarray]] = {t: [] for t in spec.tasks}
    probs: dict[str, list[np.ndarray]] = {t: [] for t in spec.tasks}
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            for t in spec.task_defs:
                name = t["name"]
                logit = out[f"logit_{name}"]
                p = torch.sigmoid(logit) if t["kind"] == "binary" else torch.softmax(logit, dim=1)
                probs[name].append(p.numpy())
                labels[name].append(batch["labels"][:, index[name]].numpy())
    model.train(was)
    return TabularPredictions({k: np.concatenate(v) if v else np.zeros(0) for k, v in labels.items()},
                              {k: np.concatenate(v) if v else np.zeros(0) for k, v in probs.items()})


def metrics(spec: TabularSpec, pred: TabularPredictions) -> dict[str, float]:
    """``<task>_auc`` and ``<task>_logloss`` (binary) or ``<task>_accuracy`` and ``<task>_macro_f1``
    (multiclass), and ``<task>_rows``."""
    out: dict[str, float] = {}
    for t in spec.task_defs:
        name = t["name"]
        y, p = pred.labels[name], pred.probs[name]
        out[f"{name}_rows"] = float(len(y))
        if t["kind"] == "binary":
            out[f"{name}_auc"] = ev.auc(y, p, f"{name} AUC")
            out[f"{name}_logloss"] = ev.log_loss(y, p)
        else:
            guess = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
            out[f"{name}_accuracy"] = float(np.mean(guess == y)) if len(y) else math.nan
            out[f"{name}_macro_f1"] = ev.macro_f1(y, guess)
    return out


def main_metric(spec: TabularSpec, task: str) -> str:
    """The metric that ranks a task: AUC (binary) or accuracy (multiclass)."""
    kind = next(x["kind"] for x in spec.task_defs if x["name"] == task)
    return f"{task}_auc" if kind == "binary" else f"{task}_accuracy"


def selection_score(spec: TabularSpec, values: Mapping[str, float]) -> float:
    """The mean of every task's main validation metric (NaN ones left out)."""
    return ev.finite_mean(values, [main_metric(spec, t) for t in spec.tasks])


def _main_values(kind: str, y: np.ndarray, probs: np.ndarray) -> tuple[str, np.ndarray]:
    """What a task's main metric is recomputed from: rank groups (AUC) or per-row hits (accuracy)."""
    if kind == "binary":
        return "auc", ev._rank_groups(probs)
    return "accuracy", (probs.argmax(1) == y).astype(np.float64)


def _weighted(kind: str, values: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    if kind == "auc":
        return ev.weighted_auc(values, y, w)
    return float(np.average(values, weights=w)) if w.sum() > 0 else math.nan


def bootstrap(candidate: TabularPredictions, champion: TabularPredictions, spec: TabularSpec, resamples: int = 400,
              confidence: float = 0.95, seed: int = 0) -> list[ev.Interval]:
    """Candidate minus champion of every task's main metric on the same rows: a Poisson(1) weight per
    row per resample, both models rescored under the same weights; percentile intervals."""
    rng = np.random.default_rng(seed)
    pairs = []
    for t in spec.task_defs:
        name = t["name"]
        y = candidate.labels[name]
        if name not in champion.probs or len(champion.probs[name]) != len(y):
            continue
        kind, a = _main_values(t["kind"], y, candidate.probs[name])
        _, b = _main_values(t["kind"], y, champion.probs[name])
        pairs.append((f"{name}_{kind}", kind, y, a, b))
    out = []
    for metric, kind, y, a, b in pairs:
        ones = np.ones(len(y))
        va, vb = _weighted(kind, a, y, ones), _weighted(kind, b, y, ones)
        deltas = []
        for _ in range(resamples):
            w = rng.poisson(1.0, len(y)).astype(np.float64)
            deltas.append(_weighted(kind, a, y, w) - _weighted(kind, b, y, w))
        lo, hi = ev.percentile_interval(np.asarray(deltas), confidence)
        out.append(ev.Interval(metric, va, vb, va - vb, lo, hi))
    return out


# ---------------------------------------------------------------------- serving: raw rows in
def encode_frame(encoding: Mapping[str, Any], frame: "pd.DataFrame") -> Batch:
    """Raw rows (the source table's columns) -> ``cat`` (N, C) and ``dense`` (N, D) tensors, exactly as
    :func:`features.tabular.encode` encodes them in Spark.

    Raises:
        PlatformError: a declared column is missing, or a dense value is not a number.
    """
    import pandas as pd

    missing = [c for c in [*encoding["categorical"], *encoding["dense"]] if c not in frame.columns]
    if missing:
        raise PlatformError(f"input rows lack the model's columns {missing}; pass every column of the training table")
    n = len(frame)
    cat = np.ones((n, len(encoding["categorical"])), dtype=np.int64)
    for j, c in enumerate(encoding["categorical"]):
        ids = {v: i + 2 for i, v in enumerate(encoding["vocab"][c])}
        text = frame[c].map(lambda v: "<null>" if v is None or (isinstance(v, float) and math.isnan(v))
                            else str(v).strip())
        cat[:, j] = text.map(lambda v: ids.get(v, 1)).to_numpy(dtype=np.int64)
    dense = np.zeros((n, len(encoding["dense"])), dtype=np.float32)
    for j, (c, m, sd) in enumerate(zip(encoding["dense"], encoding["mean"], encoding["std"])):
        values = pd.to_numeric(frame[c], errors="coerce")
        bad = values.isna() & frame[c].notna()
        if bad.any():
            raise PlatformError(f"dense column '{c}' holds a non-numeric value, e.g. {frame[c][bad].iloc[0]!r}")
        x = values.to_numpy(dtype=np.float64)
        if c in encoding["log"]:
            x = np.sign(x) * np.log1p(np.abs(x))
        dense[:, j] = np.nan_to_num((x - m) / sd, nan=0.0)
    return {"cat": torch.as_tensor(cat), "dense": torch.as_tensor(dense)}


def predict_frame(model: TabularModel, frame: "pd.DataFrame", batch_size: int = 8192) -> "pd.DataFrame":
    """``<task>_prob`` (binary: P(positive)) or ``<task>_probs`` (multiclass: one per class) per raw row."""
    import pandas as pd

    inputs = encode_frame(model.spec.encoding, frame)
    n = len(frame)
    parts: dict[str, list[np.ndarray]] = {t: [] for t in model.spec.tasks}
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out = model({k: v[start:start + batch_size] for k, v in inputs.items()})
            for t in model.spec.task_defs:
                logit = out[f"logit_{t['name']}"]
                p = torch.sigmoid(logit) if t["kind"] == "binary" else torch.softmax(logit, dim=1)
                parts[t["name"]].append(p.numpy())
    cols: dict[str, Any] = {}
    for t in model.spec.task_defs:
        values = np.concatenate(parts[t["name"]]) if parts[t["name"]] else np.zeros(0)
        if t["kind"] == "binary":
            cols[f"{t['name']}_prob"] = values.astype(np.float64)
        else:
            cols[f"{t['name']}_probs"] = [row.tolist() for row in values]
    return pd.DataFrame(cols, index=frame.index)


# ---------------------------------------------------------------------- the trainer's view
class TabularWorkload:
    """What :func:`training.trainer.train_process` needs to train a :class:`TabularModel`."""

    def __init__(self, spec: TabularSpec) -> None:
        self.spec = spec
        self.loss_names = spec.loss_names
        self.known_losses = tuple(x["name"] for x in spec.encoding["tasks"])

    def build(self) -> TabularModel:
        return TabularModel(self.spec)

    def train_source(self, cfg: TrainingConfig, files: Sequence[str], rank: int = 0, world: int = 1) \
            -> PetastormSource:
        from training.trainer import train_source

        return train_source(cfg, files, rank, world, fields=FIELDS, bucket=False)

    def eval_source(self, cfg: TrainingConfig, files: Sequence[str]) -> PetastormSource:
        from training.trainer import eval_source

        return eval_source(cfg, files, fields=FIELDS)

    def losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], names: Iterable[str]) \
            -> dict[str, Tensor]:
        return tabular_losses(self.spec, outputs, batch, names)

    def counts(self, batch: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, int]:
        return tabular_counts(batch, names)

    def examples(self, batch: Batch) -> int:
        """A training example is a row (all its labels), as in the papers' samples/s."""
        return int(batch["labels"].shape[0])

    def score(self, model: nn.Module, batches: Iterable[Batch], analyse: bool = False) -> dict[str, float]:
        return metrics(self.spec, predict(model, batches))

    def selection_score(self, values: Mapping[str, float], cfg: TrainingConfig) -> float:
        return selection_score(self.spec, values)

    def shown(self, values: Mapping[str, float]) -> dict[str, float]:
        main = {main_metric(self.spec, t) for t in self.spec.tasks}
        return {k: round(v, 4) for k, v in values.items() if k in main}

    def analyse(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """Nothing to analyse after selection (DUPN's attention analysis has no tabular counterpart)."""

    def report(self, result: Any) -> None:
        """Nothing to add to the result."""
