"""Everything needed to build a model (:func:`training.model.build_model`), as one JSON-able value.

A :class:`ModelSpec` is stored next to every logged model (``spec.to_dict()``) so serving
and incremental training rebuild exactly the same architecture, embedding-table sizes and
frozen input normalisation (``ModelSpec.from_dict``) without reading the configuration.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from core.config import Config, ModelConfig, SequencesConfig
from core.errors import ConfigError, PlatformError
from core.tables import TASKS, USER_DENSE_DIM
from features.encoding import vocab_sizes

logger = logging.getLogger(__name__)

SPEC_VERSION = 2
# Dense model inputs that are normalised with frozen statistics, and the spec field holding
# each one's width (None = a scalar input, width 1).
DENSE_INPUTS: dict[str, str | None] = {
    "seq_log_price": None, "item_log_price": None, "rank_features": "rank_dim", "user_dense": "user_dense_dim",
    "rel_log_price": None}
REQUIRED_VOCAB = ("item", "shop", "brand", "category", "tag", "query_token", "talent", "talent_category",
                  "behavior", "scene", "time_bucket", "age", "gender", "city")
PPP_CLASSES = 7

Norm = dict[str, tuple[list[float], list[float]]]


@dataclass(frozen=True)
class ModelSpec:
    """Shapes, sizes and statistics of one DUPN model.

    Attributes:
        vocab: embedding-table size of every categorical input (see
            :func:`features.encoding.vocab_sizes`; index 0 = padding, 1 = unknown).
        max_len: L, length of the behaviour sequence arrays.
        max_tags: K, tags per item.
        max_query_tokens: Q, tokens per query.
        rank_dim: F, width of ``rank_features`` (the L2R task's features).
        user_dense_dim: U, width of ``user_dense``.
        model: sizes and multi-task design (:class:`core.config.ModelConfig`).
        tasks: enabled tasks in canonical order, a subset of ``core.tables.TASKS``.
        norm: dense input name -> (mean per column, variance per column); every entry of
            ``DENSE_INPUTS`` is present after construction (missing ones default to 0 / 1).
        logit_offsets: task -> offset added to its logit at prediction time to undo the training
            split's sampling (``log(negative_rate / positive_upsample)``, from the training set's
            commit metadata), so predicted probabilities are probabilities of the unsampled data.
        category_log_price: hashed category index -> the mean log price of its items (frozen
            statistics of ``features/feature_stats``): every item's price is also given relative to
            its category (``rel_log_price``), since a price reveals purchasing power only that way.
        side_columns: the hand-crafted columns the item and follow heads read beside the representation
            (the hybrid model, ``features/hybrid.py``; empty: none), raw from ``features/hybrid_examples``.
        side_knots: per side column, the training split's quantiles the model ranks its raw values at.
        tower_log_priors: with ``model.side_detached``, the heads that train the tower read the target priors
            as logs whatever ``model.prior_pieces`` gives the side heads (DUPN-all's heads). False only in the
            specs of detached models registered before 2026-12-07's a20ddb6, whose tower heads read the priors
            as the side heads do; :meth:`from_dict` gives False when the key is absent, so those still load.
    """

    vocab: dict[str, int]
    max_len: int
    max_tags: int
    max_query_tokens: int
    rank_dim: int
    user_dense_dim: int
    model: ModelConfig
    tasks: tuple[str, ...]
    norm: Norm = field(default_factory=dict)
    logit_offsets: dict[str, float] = field(default_factory=dict)
    category_log_price: dict[int, float] = field(default_factory=dict)
    side_columns: tuple[str, ...] = ()
    side_knots: tuple[tuple[float, ...], ...] = ()
    tower_log_priors: bool = True

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED_VOCAB if k not in self.vocab]
        if missing:
            raise ConfigError(f"ModelSpec.vocab lacks {missing}; build it with features.encoding.vocab_sizes")
        small = {k: v for k, v in self.vocab.items() if int(v) < 2}
        if small:
            raise ConfigError(f"ModelSpec.vocab sizes must be >= 2 (padding + unknown), got {small}")
        for name in ("max_len", "max_tags", "max_query_tokens", "rank_dim", "user_dense_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ModelSpec.{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "vocab", {k: int(v) for k, v in self.vocab.items()})
        object.__setattr__(self, "tasks", canonical_tasks(self.tasks))
        object.__setattr__(self, "norm", self._complete_norm(self.norm))
        bad = {k: v for k, v in self.logit_offsets.items() if k not in ("ctr", "follow") or not math.isfinite(v)}
        if bad:
            raise ConfigError(f"ModelSpec.logit_offsets must be finite offsets of 'ctr' / 'follow', got {bad}")
        object.__setattr__(self, "logit_offsets", {k: float(v) for k, v in self.logit_offsets.items()})
        prices = {int(k): float(v) for k, v in self.category_log_price.items()}
        bad_prices = {k: v for k, v in prices.items() if not (0 <= k < self.vocab["category"] and math.isfinite(v))}
        if bad_prices:
            raise ConfigError(f"ModelSpec.category_log_price needs finite prices of category indices below "
                              f"{self.vocab['category']}, got {dict(list(bad_prices.items())[:5])}")
        object.__setattr__(self, "category_log_price", prices)
        columns = tuple(str(c) for c in self.side_columns)
        knots = tuple(tuple(float(x) for x in k) for k in self.side_knots)
        if len(knots) != len(columns) or (columns and self.model.side_inputs != len(columns)):
            raise ConfigError(f"ModelSpec: {len(columns)} side columns, {len(knots)} lists of knots and "
                              f"model.side_inputs={self.model.side_inputs}; they must agree (ModelSpec.with_side)")
        bad_knots = [c for c, k in zip(columns, knots)
                     if not all(math.isfinite(x) for x in k) or any(b <= a for a, b in zip(k, k[1:]))]
        if bad_knots:
            raise ConfigError(f"ModelSpec.side_knots of {bad_knots[:3]} must be finite and strictly increasing; "
                              f"rebuild features/hybrid_examples")
        object.__setattr__(self, "side_columns", columns)
        object.__setattr__(self, "side_knots", knots)

    def with_side(self, columns: Sequence[str], knots: Sequence[Sequence[float]]) -> "ModelSpec":
        """This spec whose heads also read the raw side ``columns``, ranked at ``knots`` (the hybrid model)."""
        model = self.model.model_copy(update={"side_inputs": len(columns)})
        return replace(self, model=model, side_columns=tuple(columns), side_knots=tuple(map(tuple, knots)))

    @property
    def reads_side(self) -> bool:
        """True when the model reads raw side inputs from its batches (``slot_side`` and ``row_side``)."""
        return bool(self.side_columns)

    def offset(self, task: str) -> float:
        """The prediction-time logit offset of ``task`` (0 when its training data was not sampled)."""
        return self.logit_offsets.get(task, 0.0)

    # ------------------------------------------------------------------ derived facts
    @property
    def esmm(self) -> bool:
        """True when the model has the ESMM conversion head (needs the CTR task)."""
        return self.model.esmm and "ctr" in self.tasks

    @property
    def head_names(self) -> tuple[str, ...]:
        """Prediction heads in order: the enabled tasks, with ``cvr`` after ``ctr`` under ESMM."""
        names: list[str] = []
        for task in self.tasks:
            names.append(task)
            if task == "ctr" and self.esmm:
                names.append("cvr")
        return tuple(names)

    @property
    def loss_names(self) -> tuple[str, ...]:
        """Losses the model is trained on (the "tasks" of task weighting)."""
        return tuple("ctcvr" if h == "cvr" else h for h in self.head_names)

    def width(self, dense_input: str) -> int:
        """Number of columns of a dense input (1 for the scalar log prices)."""
        attr = DENSE_INPUTS[dense_input]
        return 1 if attr is None else int(getattr(self, attr))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Config, tasks: Iterable[str] | None = None,
                    norm: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                    logit_offsets: Mapping[str, float] | None = None,
                    category_log_price: Mapping[int, float] | None = None) -> "ModelSpec":
        """The spec of the configured model.

        Args:
            cfg: the platform configuration.
            tasks: enabled tasks; ``None`` takes ``cfg.training.tasks``.
            norm: normalisation statistics of the dense inputs (``features/feature_stats``);
                missing entries default to mean 0 / variance 1.
            logit_offsets: sampling corrections (see the class docstring).
            category_log_price: mean log price per hashed category (see the class docstring).
        """
        seq = cfg.sequences
        return cls(
            vocab=vocab_sizes(seq.hash_buckets, seq.time_bucket_edges_s),
            max_len=seq.max_len, max_tags=seq.max_tags, max_query_tokens=seq.max_query_tokens,
            rank_dim=cfg.inputs.rank_features_dim, user_dense_dim=USER_DENSE_DIM,
            model=cfg.training.model,
            tasks=tuple(cfg.training.tasks if tasks is None else tasks),
            norm={k: (list(m), list(v)) for k, (m, v) in (norm or {}).items()},
            logit_offsets=dict(logit_offsets or {}), category_log_price=dict(category_log_price or {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data that :meth:`from_dict` turns back into an equal spec."""
        return {
            "version": SPEC_VERSION,
            "vocab": dict(self.vocab),
            "max_len": self.max_len, "max_tags": self.max_tags, "max_query_tokens": self.max_query_tokens,
            "rank_dim": self.rank_dim, "user_dense_dim": self.user_dense_dim,
            "model": self.model.model_dump(mode="json"),
            "tasks": list(self.tasks),
            "norm": {k: [list(m), list(v)] for k, (m, v) in self.norm.items()},
            "logit_offsets": dict(self.logit_offsets),
            "category_log_price": {str(k): v for k, v in sorted(self.category_log_price.items())},
            "side_columns": list(self.side_columns),
            "side_knots": [list(k) for k in self.side_knots],
            "tower_log_priors": self.tower_log_priors,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Rebuild a spec stored with :meth:`to_dict`.

        Raises:
            ConfigError: unknown version or keys, or missing keys.
        """
        version = data.get("version")
        if version != SPEC_VERSION:
            raise ConfigError(f"model spec version {version!r} is not supported (expected {SPEC_VERSION}); "
                              "rebuild the spec with this code version")
        expected = {"version", "vocab", "max_len", "max_tags", "max_query_tokens", "rank_dim",
                    "user_dense_dim", "model", "tasks", "norm", "logit_offsets", "category_log_price"}
        # absent from the specs of models that read no side inputs, and of models stored before the key existed
        optional = {"side_columns", "side_knots", "tower_log_priors"}
        unknown, absent = set(data) - expected - optional, expected - set(data)
        if unknown or absent:
            raise ConfigError(f"model spec: unknown keys {sorted(unknown)}, missing keys {sorted(absent)}")
        return cls(
            vocab={str(k): int(v) for k, v in data["vocab"].items()},
            max_len=int(data["max_len"]), max_tags=int(data["max_tags"]),
            max_query_tokens=int(data["max_query_tokens"]), rank_dim=int(data["rank_dim"]),
            user_dense_dim=int(data["user_dense_dim"]),
            model=ModelConfig.model_validate(data["model"]),
            tasks=tuple(data["tasks"]),
            norm={str(k): ([float(x) for x in mv[0]], [float(x) for x in mv[1]])
                  for k, mv in data["norm"].items()},
            logit_offsets={str(k): float(v) for k, v in data["logit_offsets"].items()},
            category_log_price={int(k): float(v) for k, v in data["category_log_price"].items()},
            side_columns=tuple(str(c) for c in data.get("side_columns") or ()),
            side_knots=tuple(tuple(float(x) for x in k) for k in data.get("side_knots") or ()),
            tower_log_priors=bool(data.get("tower_log_priors", False)))

    def _complete_norm(self, norm: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Norm:
        unknown = sorted(set(norm) - set(DENSE_INPUTS))
        if unknown:
            raise ConfigError(f"ModelSpec.norm has unknown inputs {unknown}; known: {sorted(DENSE_INPUTS)}")
        out: Norm = {}
        for name in DENSE_INPUTS:
            width = self.width(name)
            if name not in norm:
                logger.debug("no normalisation statistics for %s; using mean 0, variance 1", name)
                out[name] = ([0.0] * width, [1.0] * width)
                continue
            mean, var = [float(x) for x in norm[name][0]], [float(x) for x in norm[name][1]]
            if len(mean) != width or len(var) != width:
                raise ConfigError(f"ModelSpec.norm['{name}'] has {len(mean)} means and {len(var)} variances, "
                                  f"expected {width} of each (the input's width)")
            if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(v) and v >= 0 for v in var):
                raise ConfigError(f"ModelSpec.norm['{name}'] must hold finite means and non-negative "
                                  f"variances, got {mean} / {var}; recompute features/feature_stats")
            out[name] = (mean, var)
        return out


def canonical_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """Enabled tasks in the order of ``core.tables.TASKS``, validated and de-duplicated.

    Raises:
        ConfigError: an unknown or empty task list.
    """
    given = list(tasks)
    unknown = [t for t in given if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    if not given:
        raise ConfigError(f"at least one task must be enabled (choose from {list(TASKS)})")
    return tuple(t for t in TASKS if t in given)


def check_encoding(spec: ModelSpec, sequences: SequencesConfig, version: str) -> None:
    """Fail in one line when the configured sequence encoding differs from the one a registered
    model version was trained with (its embedding tables would be indexed out of range, or hit
    the wrong rows).

    Raises:
        PlatformError: naming every differing setting.
    """
    expected = {**vocab_sizes(sequences.hash_buckets, sequences.time_bucket_edges_s),
                "max_len": sequences.max_len, "max_tags": sequences.max_tags}
    actual = {**spec.vocab, "max_len": spec.max_len, "max_tags": spec.max_tags}
    diff = [f"{k} {actual.get(k)} vs {v}" for k, v in expected.items() if actual.get(k) != v]
    if diff:
        raise PlatformError(f"model version {version} was trained with another sequence encoding than the config "
                            f"(model vs config: {', '.join(diff)}): use the sequences settings it was trained "
                            f"with, or train a new version")
