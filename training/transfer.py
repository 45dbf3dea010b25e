"""Downstream transfer of the universal user representation: the shop-preference task four ways.

The DUPN paper's transfer experiment, on ``raw/shop_prefs`` (a task never used to train the
shared representation). All four methods train on the same train split and are scored on the
same test split of ``features/transfer_examples``; each row is one shop impression with its
label, the user's behaviour sequence and the user's published vector:

* ``rt`` representation transfer: a shallow model (:class:`ShopHead`, one hidden layer) over
  the **published** vector of ``outputs/user_representations`` and the shop features (fresh
  hashed shop-id and shop-category embeddings, the shop's price level and size from
  ``raw/items``); the user network is not touched (what a downstream team can do with the table).
* ``ft`` fine-tuning: the user tower of the registered model version that published the
  snapshot's vectors (or a chosen version), loaded from the MLflow registry, with a new
  :class:`ShopHead` whose shop and category embeddings are the tower's own (pre-trained)
  tables; all trained end to end.
* ``rs`` single task from scratch: the same architecture as ``ft``, freshly initialised.
* ``ra`` all tasks retrained: a fresh :class:`training.model.DUPNModel` (that version's spec)
  plus the shop head, trained jointly on the original tasks' training examples and the shop
  rows mixed into every batch (losses masked per task). Its budget is ``ra_mix`` original rows
  per shop row and step, for the same number of epochs as the others.

Point in time: for ``--date D`` the examples are the shop impressions of days (S, D] with
S = D - days, and every method sees user information as of the end of S: ``rt`` the published
vectors of ``dt = S``, the others ``features/user_sequences`` of ``dt = S`` (the snapshot the
nightly job scored). ``ra``'s original examples are the training days up to S.

Shapes: B = batch size, L = max_len, R = representation dim, Ds = shop embedding dim.
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pyspark.sql import types as T
from torch import Tensor, nn

from core import tables as t
from core.config import TrainingConfig, WeightingConfig
from core.errors import DataQualityError, PlatformError
from core.tables import TableSpec
from features.encoding import UNKNOWN, hashed
from features.sequences import end_of_day
from training import metrics
from training.data import TRAIN_FIELDS, USER_FIELDS, Batch, PetastormSource
from training.model import DUPNModel, UserTower, build_model, last_shared_layer
from training.modules import embedding, mlp
from training.spec import ModelSpec
from training.step import TrainTask
from training.weighting import TaskWeighting, build_weighting

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.delta import DeltaTables
    from registry.tracking import Tracker

logger = logging.getLogger(__name__)

METHODS = ("rt", "ft", "rs", "ra")
METHOD_NAMES = {"rt": "representation transfer", "ft": "fine-tuning", "rs": "single task from scratch",
                "ra": "all tasks retrained"}
DEFAULT_DAYS = 2
DEFAULT_RA_MIX = 4
# task_id of shop rows mixed into multi-task batches (after core.tables.TASKS)
SHOP_TASK_ID = len(t.TASKS)
HASH_SPACE = 1_000_000
FINGERPRINT_MOD = 1_000_000_007

# ---------------------------------------------------------------------- the materialised dataset
_USER_SIDE = [f for f in t.USER_SEQUENCES.schema.fields if f.name not in ("user_id", "dt")]
USER_SIDE_COLUMNS = tuple(f.name for f in _USER_SIDE)


def _f(name: str, dtype: T.DataType, nullable: bool = False) -> T.StructField:
    return T.StructField(name, dtype, nullable)


TRANSFER_EXAMPLES = TableSpec("features/transfer_examples", T.StructType(
    [_f("example_id", T.LongType()), _f("user_id", T.LongType()), _f("shop_id", T.LongType()),
     _f("event_time", T.TimestampType()), _f("example_dt", T.StringType()), _f("label", T.IntegerType()),
     _f("shop", T.IntegerType()), _f("shop_category", T.IntegerType()),
     _f("shop_dense", T.ArrayType(T.FloatType())), _f("embedding", T.ArrayType(T.FloatType())),
     _f("rep_model_version", T.StringType())]
    + _USER_SIDE
    + [_f("snapshot_dt", T.StringType()), _f("split", T.StringType()), _f("dt", T.StringType())]),
    ("dt", "split"),
    "shop-preference examples of days (S, dt] with the users' sequences and published vectors as of the end "
    "of S; split train/test by a hash of user_id (jobs/transfer.py)")

SHOP_FIELDS = ("shop", "shop_category", "shop_dense")
SHOP_DENSE = ("mean_log_price", "log_items")  # standardised over the shops of raw/items
RT_FIELDS = ("example_id", "embedding", *SHOP_FIELDS, "label")
NET_FIELDS = ("example_id", *USER_FIELDS, *SHOP_FIELDS, "label")


@dataclass(frozen=True)
class TransferWindow:
    """The days of one transfer run: examples of (snapshot_day, day], users as of the end of snapshot_day."""

    day: _dt.date
    snapshot_day: _dt.date
    example_days: tuple[str, ...]

    @classmethod
    def of(cls, day: _dt.date, days: int) -> "TransferWindow":
        """Window of ``days`` example days ending with ``day``.

        Raises:
            PlatformError: ``days`` < 1.
        """
        if days < 1:
            raise PlatformError(f"the transfer window needs at least one day of examples, got days={days}")
        snapshot = day - _dt.timedelta(days=days)
        return cls(day, snapshot, tuple((snapshot + _dt.timedelta(days=i)).isoformat() for i in range(1, days + 1)))

    @property
    def snapshot(self) -> str:
        return self.snapshot_day.isoformat()

    def describe(self) -> str:
        return (f"examples of {self.example_days[0]}..{self.example_days[-1]}, users as of the end of "
                f"{self.snapshot}")


def require_snapshot(tables: "DeltaTables", snapshot_day: str) -> None:
    """Fail in one line, naming the job to run, when an input partition of the snapshot day is missing.

    Raises:
        PlatformError: ``features/user_sequences`` or ``outputs/user_representations`` has no
            partition ``dt = snapshot_day``.
    """
    if not (tables.exists(t.USER_SEQUENCES) and snapshot_day in tables.partitions(t.USER_SEQUENCES)):
        raise PlatformError(f"features/user_sequences has no partition dt={snapshot_day} (the transfer snapshot): "
                            f"run build_sequences --date {snapshot_day}")
    if not (tables.exists(t.USER_REPRESENTATIONS) and snapshot_day in tables.partitions(t.USER_REPRESENTATIONS)):
        raise PlatformError(f"outputs/user_representations has no partition dt={snapshot_day} (the vectors "
                            f"representation transfer reads): run publish_user_representations --date {snapshot_day}")


def published_version(tables: "DeltaTables", snapshot_day: str) -> str:
    """The model version that wrote ``outputs/user_representations`` dt = ``snapshot_day``: FT then
    fine-tunes the very network whose vectors RT reads (and which was trained on data up to the
    snapshot at the latest, since the nightly job of S ran at S).

    Raises:
        PlatformError: the partition mixes model versions.
    """
    rows = (tables.read(t.USER_REPRESENTATIONS, dt=snapshot_day).select("model_version").distinct()
            .limit(2).collect())  # <= 2 rows
    if len(rows) != 1:
        raise PlatformError(f"outputs/user_representations dt={snapshot_day} holds "
                            f"{'no rows' if not rows else 'several model versions'}: re-run "
                            f"publish_user_representations --date {snapshot_day}, or pass --model-version N")
    return str(rows[0]["model_version"])


def split_of(user_id: "Column", test_share: float, seed: int) -> "Column":
    """``"test"`` for a deterministic share ``test_share`` of users (hash of user_id and seed), else ``"train"``."""
    from pyspark.sql import functions as F_

    u = F_.pmod(F_.xxhash64(F_.lit(seed), F_.lit("transfer_split"), user_id), F_.lit(HASH_SPACE)) / HASH_SPACE
    return F_.when(u < F_.lit(test_share), F_.lit("test")).otherwise(F_.lit("train"))


def shop_features(items: "DataFrame", shop_buckets: int, category_buckets: int) -> "DataFrame":
    """``raw/items`` -> one row per shop: ``shop`` (hashed id), ``shop_category`` (the hashed id of
    the shop's most frequent item category, the index of ``seq_category``) and ``shop_dense``
    (``SHOP_DENSE``: mean log price of its items and log item count, standardised over the shops).

    The standardising moments are one aggregate row; nothing per shop reaches the driver.
    """
    from pyspark.sql import functions as F_

    per_shop = (items.where(F_.col("shop_id").isNotNull())
                .groupBy("shop_id")
                .agg(F_.mode("category_id").alias("category_id"),
                     F_.coalesce(F_.avg(F_.log1p("price")), F_.lit(0.0)).alias("mean_log_price"),
                     F_.log1p(F_.count(F_.lit(1)).cast("double")).alias("log_items")))
    moments = per_shop.agg(*[F_.avg(c).alias(f"m_{c}") for c in SHOP_DENSE],
                           *[F_.stddev_pop(c).alias(f"s_{c}") for c in SHOP_DENSE]).first()
    assert moments is not None  # a global aggregate has exactly one row
    z = [((F_.col(c) - F_.lit(float(moments[f"m_{c}"] or 0.0))) / F_.lit(max(float(moments[f"s_{c}"] or 0.0), 1e-6)))
         .cast("float") for c in SHOP_DENSE]
    return per_shop.select(
        "shop_id", hashed(F_.col("shop_id"), "shop_id", shop_buckets).alias("shop"),
        hashed(F_.col("category_id"), "category_id", category_buckets).alias("shop_category"),
        F_.array(*z).alias("shop_dense"))


def transfer_examples(labels: "DataFrame", sequences: "DataFrame", representations: "DataFrame",
                      items: "DataFrame", window: TransferWindow, shop_buckets: int, category_buckets: int,
                      test_share: float, seed: int) -> "DataFrame":
    """Rows of ``features/transfer_examples`` partition ``window.day``.

    Args:
        labels: valid ``raw/shop_prefs`` rows (any days; only the window's are used).
        sequences: ``features/user_sequences`` (only ``dt = snapshot`` is used).
        representations: ``outputs/user_representations`` (only ``dt = snapshot`` is used).
        window: the example days and the snapshot day.
        items: ``raw/items`` (the shop features, :func:`shop_features`).
        shop_buckets, category_buckets: ``sequences.hash_buckets`` of shop_id and category_id
            (the indices of ``seq_shop`` and ``seq_category``).
        test_share, seed: the user-hash split.

    Examples whose user is absent from the snapshot (no behaviour in the look-back window
    ending with S, or not scored) are dropped: every method then sees exactly the same rows.
    """
    from pyspark.sql import functions as F_

    start, end = end_of_day(window.snapshot_day), end_of_day(window.day)
    ex = (labels.where(F_.col("dt").isin(*window.example_days) & (F_.col("event_time") >= F_.lit(start))
                       & (F_.col("event_time") < F_.lit(end)))
          .select(F_.xxhash64(F_.lit("shop_pref"), "user_id", "shop_id", "event_time").alias("example_id"),
                  "user_id", "shop_id", "event_time", F_.col("dt").alias("example_dt"),
                  F_.col("label").cast("int").alias("label")))
    shops = shop_features(items, shop_buckets, category_buckets).drop("shop")
    unknown = F_.array(*[F_.lit(0.0).cast("float")] * len(SHOP_DENSE))
    ex = (ex.join(F_.broadcast(shops), "shop_id", "left")
          .select(*ex.columns, hashed(F_.col("shop_id"), "shop_id", shop_buckets).alias("shop"),
                  F_.coalesce("shop_category", F_.lit(UNKNOWN)).alias("shop_category"),
                  F_.coalesce("shop_dense", unknown).alias("shop_dense")))
    seq = sequences.where(F_.col("dt") == window.snapshot).select("user_id", *USER_SIDE_COLUMNS)
    rep = (representations.where(F_.col("dt") == window.snapshot)
           .select("user_id", "embedding", F_.col("model_version").alias("rep_model_version")))
    out = (ex.join(seq, "user_id").join(rep, "user_id")
           .withColumn("snapshot_dt", F_.lit(window.snapshot))
           .withColumn("split", split_of(F_.col("user_id"), test_share, seed))
           .withColumn("dt", F_.lit(window.day.isoformat())))
    return TRANSFER_EXAMPLES.conform(out)


@dataclass(frozen=True)
class ExampleStats:
    """Aggregates of one written partition (one Spark aggregation, nothing row-sized collected)."""

    rows: dict[str, int]
    positives: dict[str, int]
    users: dict[str, int]
    rep_dim: int
    rep_model_versions: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"{s} {self.rows.get(s, 0):,} rows / {self.users.get(s, 0):,} users "
                 f"({self.positives.get(s, 0) / max(self.rows.get(s, 0), 1):.1%} positive)" for s in ("train", "test")]
        return "; ".join(parts)


def describe_examples(df: "DataFrame") -> ExampleStats:
    """Rows, positives and users per split, and the (single) embedding length.

    Raises:
        DataQualityError: embeddings of different lengths, or an empty split.
    """
    from pyspark.sql import functions as F_

    per = df.groupBy("split").agg(
        F_.count(F_.lit(1)).alias("rows"), F_.sum("label").alias("pos"), F_.countDistinct("user_id").alias("users"),
        F_.min(F_.size("embedding")).alias("dmin"), F_.max(F_.size("embedding")).alias("dmax"),
        F_.collect_set("rep_model_version").alias("versions")).collect()  # <= 2 rows
    rows = {r["split"]: int(r["rows"]) for r in per}
    dims = {int(r["dmin"]) for r in per} | {int(r["dmax"]) for r in per}
    if len(dims) != 1:
        raise DataQualityError(f"features/transfer_examples: embeddings of lengths {sorted(dims)}; the published "
                               f"partition mixes model versions, re-run publish_user_representations for it")
    empty = [s for s in ("train", "test") if not rows.get(s)]
    if empty:
        raise PlatformError(f"features/transfer_examples has no {' or '.join(empty)} rows ({rows}); widen the window "
                            f"(--days) or change transfer.test_share")
    versions = tuple(sorted({v for r in per for v in r["versions"]}))
    return ExampleStats(rows, {r["split"]: int(r["pos"] or 0) for r in per},
                        {r["split"]: int(r["users"]) for r in per}, dims.pop(), versions)


@dataclass(frozen=True)
class TransferFiles:
    """Parquet files of one table version of the transfer examples, per split."""

    version: int
    train: tuple[str, ...]
    test: tuple[str, ...]


def transfer_files(tables: "DeltaTables", day: str, version: int) -> TransferFiles:
    files = tables.files(TRANSFER_EXAMPLES, dt=day, version=version)
    return TransferFiles(version, tuple(sorted(f for f in files if "/split=train/" in f)),
                         tuple(sorted(f for f in files if "/split=test/" in f)))


@dataclass(frozen=True)
class OriginalData:
    """The original tasks' training examples ``ra`` retrains on (training days up to the snapshot)."""

    version: int
    days: tuple[str, ...]
    files: tuple[str, ...]
    rows: int


def original_training_data(tables: "DeltaTables", until: str) -> OriginalData:
    """Training (not held-out) days of ``features/training_examples`` on or before ``until``.

    Raises:
        PlatformError: the table is missing or has no such day.
    """
    if not tables.exists(t.TRAINING_EXAMPLES):
        raise PlatformError("features/training_examples does not exist (needed by the 'ra' method): run "
                            "build_training_set, or leave 'ra' out of --methods")
    version = tables.version(t.TRAINING_EXAMPLES)
    held = set(tables.metadata(t.TRAINING_EXAMPLES, version).get("holdout_days") or [])
    days = [d for d in tables.partitions(t.TRAINING_EXAMPLES, version) if d <= until and d not in held]
    if not days:
        raise PlatformError(f"features/training_examples has no training day on or before {until} (needed by "
                            f"'ra'): run build_training_set --end {until}")
    rows = tables.read(t.TRAINING_EXAMPLES, dt=days, version=version).count()
    return OriginalData(version, tuple(days), tuple(tables.files(t.TRAINING_EXAMPLES, days, version)), int(rows))


# ---------------------------------------------------------------------- models
class ShopHead(nn.Module):
    """Shop preference: MLP(representation ‖ s ‖ (P·representation) ⊙ s) -> logit (B,), where
    s = shop embedding ‖ shop-category embedding ‖ shop_dense (the shop features).

    One hidden layer; the product term hands the MLP the user-shop match directly (as
    :class:`training.model.ItemHead` does for items).

    Args:
        rep_dim: R.
        shop: the shop embedding table (Ds wide); shared with a user tower or fresh.
        category: the category embedding table (Dc wide); shared with a user tower or fresh.
        hidden: hidden width.
        dropout: dropout after the hidden layer.
    """

    def __init__(self, rep_dim: int, shop: nn.Embedding, category: nn.Embedding, hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.shop = shop
        self.category = category
        d = shop.embedding_dim + category.embedding_dim + len(SHOP_DENSE)
        self.interact = nn.Linear(rep_dim, d)
        self.mlp = mlp(rep_dim + 2 * d, [hidden], 1, dropout)

    def forward(self, representation: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """representation (B, R) float; batch ``shop`` (B,), ``shop_category`` (B,) int64,
        ``shop_dense`` (B, 2) float -> logit (B,)."""
        s = torch.cat([self.shop(batch["shop"]), self.category(batch["shop_category"]),
                       batch["shop_dense"].float()], dim=-1)
        return self.mlp(torch.cat([representation, s, self.interact(representation) * s], dim=-1)).squeeze(-1)


class ShopScorer(nn.Module):
    """A model that scores shop-preference rows: ``shop_logit(batch) -> (B,)``."""

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError


def _user_batch(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in USER_FIELDS}


class RepresentationTransfer(ShopScorer):
    """RT: :class:`ShopHead` over the published vector ``embedding`` (B, R) and fresh shop and
    category embeddings."""

    def __init__(self, rep_dim: int, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.model
        self.head = ShopHead(rep_dim, embedding(spec.vocab["shop"], m.shop_dim),
                             embedding(spec.vocab["category"], m.category_dim), m.head_hidden, m.dropout)

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: ``embedding`` (B, R) and the shop fields -> logit (B,)."""
        return self.head(batch["embedding"].float(), batch)


class ShopPreferenceNet(ShopScorer):
    """FT / RS: a DUPN user tower -> representation (B, R) -> :class:`ShopHead` (sharing the tower's shop and
    category tables)."""

    def __init__(self, tower: UserTower, hidden: int, dropout: float) -> None:
        super().__init__()
        self.tower = tower
        self.head = ShopHead(tower.out_dim, tower.items.shop, tower.items.category, hidden, dropout)

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: user-side keys (``USER_FIELDS``) and ``shop`` (B,) -> logit (B,)."""
        return self.head(self.tower(_user_batch(batch))["representation"], batch)


class JointShopDUPN(ShopScorer):
    """RA: a DUPN model with one more head, :class:`ShopHead` on the shared representation."""

    def __init__(self, dupn: DUPNModel, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dupn = dupn
        self.head = ShopHead(dupn.tower.out_dim, dupn.tower.items.shop, dupn.tower.items.category, hidden, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A mixed batch (:func:`merge_batches`) -> every DUPN output plus ``shop_logit`` (B,)."""
        out = self.dupn(batch)
        out["shop_logit"] = self.head(out["representation"], batch)
        return out

    def shop_logit(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.dupn.tower(_user_batch(batch))["representation"], batch)


# ---------------------------------------------------------------------- batches
class BatchSource(Protocol):
    """Anything with ``batches(epoch)``: :class:`training.data.PetastormSource`, ``TensorBatches``."""

    def batches(self, epoch: int = 0) -> Iterator[Batch]: ...


_FILL = {"task_id": SHOP_TASK_ID, "label_tier": -1, "l2r_weight": 1, "sample_weight": 1}


def _rows(batch: Mapping[str, Tensor]) -> int:
    return len(next(iter(batch.values())))


def merge_batches(shop: Mapping[str, Tensor], original: Mapping[str, Tensor]) -> Batch:
    """Stack a shop batch (first) on an original multi-task batch; columns one side lacks get fillers.

    Shop rows get ``task_id = SHOP_TASK_ID`` (so the original losses ignore them), no query,
    no item/talent, ``label_tier = -1``; original rows get ``shop = 0`` (padding) and
    ``label = 0`` (the shop loss ignores them).

    Raises:
        ValueError: a column has a different width on the two sides (sequence settings differ).
    """
    ns, no = _rows(shop), _rows(original)
    out: Batch = {}
    for key in sorted(set(shop) | set(original)):
        a, b = shop.get(key), original.get(key)
        if a is None and b is not None:
            a = torch.full((ns, *b.shape[1:]), _FILL.get(key, 0), dtype=b.dtype)
        if b is None and a is not None:
            b = torch.full((no, *a.shape[1:]), _FILL.get(key, 0), dtype=a.dtype)
        assert a is not None and b is not None  # the key comes from one of the two
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"column {key} is {tuple(a.shape[1:])} wide in the shop rows and {tuple(b.shape[1:])} "
                             f"in the original examples; build both with the same sequences settings")
        out[key] = torch.cat([a, b.to(a.dtype)])
    return out


def shop_rows(batch: Mapping[str, Tensor]) -> Tensor:
    """(B,) bool: the shop-task rows of a batch (all rows of a shop-only batch)."""
    if "task_id" in batch:
        return batch["task_id"] == SHOP_TASK_ID
    return torch.ones(_rows(batch), dtype=torch.bool)


class MixedBatches:
    """RA's batches: each shop batch of ``n`` rows stacked on ``ratio * n`` original-task rows.

    The original source is read with batch size ``ratio * shop batch size`` and restarted (with
    another shuffling seed) when exhausted; an epoch ends with the shop source.
    """

    def __init__(self, shop: BatchSource, original: BatchSource, ratio: int) -> None:
        if ratio < 1:
            raise ValueError(f"ra_mix must be >= 1 original rows per shop row, got {ratio}")
        self.shop, self.original, self.ratio = shop, original, ratio

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        passes = 0
        orig = self.original.batches(epoch * 1000)
        shop = self.shop.batches(epoch)
        try:
            for sb in shop:
                ob = next(orig, None)
                if ob is None:
                    _close(orig)
                    passes += 1
                    orig = self.original.batches(epoch * 1000 + passes)
                    ob = next(orig, None)
                    if ob is None:
                        raise PlatformError("the original training examples are empty; rebuild the training set")
                n = self.ratio * _rows(sb)
                yield merge_batches(sb, {k: v[:n] for k, v in ob.items()})
        finally:
            _close(orig)
            _close(shop)


def _close(it: Iterator[Any]) -> None:
    """Stop a generator early (a Petastorm source then stops its reader threads)."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------- training tasks
def _bce(logit: Tensor, batch: Mapping[str, Tensor], rows: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``logit`` (B,) against ``label`` over ``rows`` (B,) bool."""
    per_row = F.binary_cross_entropy_with_logits(logit, batch["label"].float(), reduction="none")
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp_min(1)


def _check_finite(loss: Tensor, method: str, step: int) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(f"{method}: non-finite loss at step {step}; lower transfer.lr")


class ShopTask:
    """Shop-preference loss and optimiser of a single-task model (RT, FT, RS)."""

    def __init__(self, method: str, model: ShopScorer, lr: float) -> None:
        self.method = method
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.steps = 0

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One Adam step on a shop batch. Returns ``loss``."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = _bce(self.model.shop_logit(batch), batch, shop_rows(batch))
        _check_finite(loss, self.method, self.steps)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"loss": float(loss.detach())}


class JointShopTask(TrainTask):
    """RA: the original tasks' losses (combined by the configured weighting) + ``shop_weight`` × shop
    loss, through the training step of :class:`training.step.TrainTask` (Adam at ``lr``, no weight decay)."""

    def __init__(self, model: JointShopDUPN, weighting: TaskWeighting, lr: float, shop_weight: float = 1.0) -> None:
        cfg = TrainingConfig(optimizer="adam", lr=lr, weight_decay=0.0)
        super().__init__(model, weighting, cfg, loss_names=model.dupn.spec.loss_names)
        self.method = "ra"
        self.shop_weight = shop_weight

    def extra_losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shop = _bce(outputs["shop_logit"], batch, shop_rows(batch))
        self._shop_loss = float(shop.detach())
        return {"shop": self.shop_weight * shop}

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One Adam step on a mixed batch. Returns ``loss`` (shop), ``loss_total`` and ``loss_<task>``."""
        out = super().step(batch)
        return {"loss": self._shop_loss, "loss_total": out["loss"],
                **{f"loss_{k}": out[f"loss_{k}"] for k in self.loss_names}}


class StepTask(Protocol):
    method: str
    model: Any

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]: ...


# ---------------------------------------------------------------------- evaluation and the loop
@dataclass(frozen=True)
class ShopEval:
    """Test metrics of one pass: AUC, log loss, rows and a fingerprint of the example ids."""

    auc: float
    logloss: float
    rows: int
    fingerprint: int


class _Fingerprint:
    """Order-independent fingerprint of a set of example ids: (count, Σ id mod p)."""

    def __init__(self) -> None:
        self.rows = 0
        self.value = 0

    def update(self, ids: Tensor) -> None:
        self.rows += int(ids.numel())
        self.value = (self.value + int(torch.remainder(ids.long(), FINGERPRINT_MOD).sum())) % FINGERPRINT_MOD


@torch.no_grad()
def evaluate_shop(model: ShopScorer, batches: Iterator[Batch]) -> ShopEval:
    """AUC and log loss of ``model`` over ``batches`` (shop rows with ``label`` and ``example_id``)."""
    model.eval()
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    fp = _Fingerprint()
    for batch in batches:
        probs.append(torch.sigmoid(model.shop_logit(batch)).numpy())
        labels.append(batch["label"].numpy())
        fp.update(batch["example_id"])
    if not probs:
        return ShopEval(math.nan, math.nan, 0, 0)
    p, y = np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.float64)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    logloss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    return ShopEval(metrics.auc(y, p, "shop_auc"), logloss, fp.rows, fp.value)


@dataclass
class MethodResult:
    """Learning curve, timing and data fingerprints of one method."""

    method: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    train_rows: int = 0
    train_fingerprint: int = 0
    test_rows: int = 0
    test_fingerprint: int = 0
    original_rows: int = 0
    parameters: int = 0
    notes: str = ""

    @property
    def name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method)

    @property
    def test_auc(self) -> float:
        """Test AUC after the last epoch."""
        return float(self.epochs[-1]["test_auc"]) if self.epochs else math.nan

    @property
    def best(self) -> tuple[float, int]:
        """(best test AUC over the epochs, its epoch counted from 1)."""
        aucs = [(e["test_auc"], int(e["epoch"]) + 1) for e in self.epochs if not math.isnan(e["test_auc"])]
        return max(aucs, key=lambda x: x[0]) if aucs else (math.nan, 0)

    def as_dict(self) -> dict[str, Any]:
        best_auc, best_epoch = self.best
        return {"method": self.method, "name": self.name, "test_auc": self.test_auc, "best_test_auc": best_auc,
                "best_epoch": best_epoch, "seconds": self.seconds, "train_seconds": self.train_seconds,
                "epochs": len(self.epochs), "train_rows": self.train_rows, "original_rows_per_epoch":
                self.original_rows, "test_rows": self.test_rows, "train_fingerprint": self.train_fingerprint,
                "test_fingerprint": self.test_fingerprint, "parameters": self.parameters, "notes": self.notes,
                "curve": self.epochs}


def fit(task: StepTask, train: BatchSource, test: BatchSource, epochs: int, started: float | None = None) \
        -> MethodResult:
    """Train ``task`` for ``epochs`` passes over ``train`` and score ``test`` after each.

    Args:
        task: :class:`ShopTask` or :class:`JointShopTask`.
        train, test: batch sources (shop rows carry ``example_id``, ``label``).
        epochs: passes.
        started: ``time.perf_counter()`` when the method started (model building counts).
    """
    started = time.perf_counter() if started is None else started
    result = MethodResult(task.method, parameters=sum(p.numel() for p in task.model.parameters() if p.requires_grad))
    for epoch in range(epochs):
        t0 = time.perf_counter()
        fp = _Fingerprint()
        others = 0
        sums: dict[str, float] = {}
        steps = 0
        it = train.batches(epoch)
        try:
            for batch in it:
                stats = task.step(batch)
                rows = shop_rows(batch)
                fp.update(batch["example_id"][rows])
                others += int((~rows).sum())
                steps += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        finally:
            _close(it)
        train_s = time.perf_counter() - t0
        result.train_seconds += train_s
        if epoch == 0:
            result.train_rows, result.train_fingerprint, result.original_rows = fp.rows, fp.value, others
        elif (fp.rows, fp.value) != (result.train_rows, result.train_fingerprint):
            raise DataQualityError(f"{task.method}: epoch {epoch} read {fp.rows} training rows, epoch 0 read "
                                   f"{result.train_rows} (or other rows); the reader lost data")
        t1 = time.perf_counter()
        ev = evaluate_shop(task.model, test.batches())
        result.test_rows, result.test_fingerprint = ev.rows, ev.fingerprint
        row = {"epoch": float(epoch), "test_auc": ev.auc, "test_logloss": ev.logloss, "train_seconds": train_s,
               "eval_seconds": time.perf_counter() - t1, "steps": float(steps),
               "elapsed_seconds": time.perf_counter() - started,
               **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()}}
        result.epochs.append(row)
        logger.info("%s epoch %d: %d shop rows (+%d original) in %.1fs, train loss %.4f, test AUC %.4f", task.method,
                    epoch, fp.rows, others, train_s, row.get("train_loss", math.nan), ev.auc)
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------- the four methods
@dataclass(frozen=True)
class TransferSettings:
    """What every method shares (``transfer.*`` plus reader settings and the RA weighting)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    lr: float
    seed: int
    ra_mix: int = DEFAULT_RA_MIX
    reader_workers: int = 1
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    torch_threads: int | None = None


def _source(files: Sequence[str], fields: Sequence[str], s: TransferSettings, train: bool,
            batch_size: int | None = None) -> PetastormSource:
    if not files:
        raise PlatformError("no Parquet file to read (an empty split of the transfer examples?)")
    size = batch_size or (s.batch_size if train else s.eval_batch_size)
    return PetastormSource(files=tuple(files), fields=tuple(fields), batch_size=size, shuffle=train,
                           workers=s.reader_workers, seed=s.seed)


def run_rt(files: TransferFiles, rep_dim: int, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RT: a shallow :class:`RepresentationTransfer` on the published vectors (Ds = the spec's shop_dim)."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = RepresentationTransfer(rep_dim, spec)
    return fit(ShopTask("rt", model, s.lr), _source(files.train, RT_FIELDS, s, True),
               _source(files.test, RT_FIELDS, s, False), s.epochs, started)


def run_ft(files: TransferFiles, champion: DUPNModel, s: TransferSettings) -> MethodResult:
    """FT: the base model's user tower (a copy) + a new shop head, trained end to end."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = ShopPreferenceNet(copy.deepcopy(champion.tower), champion.spec.model.head_hidden,
                              champion.spec.model.dropout)
    return fit(ShopTask("ft", model, s.lr), _source(files.train, NET_FIELDS, s, True),
               _source(files.test, NET_FIELDS, s, False), s.epochs, started)


def run_rs(files: TransferFiles, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RS: the FT architecture, freshly initialised, trained on the shop task only."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = ShopPreferenceNet(UserTower(spec), spec.model.head_hidden, spec.model.dropout)
    return fit(ShopTask("rs", model, s.lr), _source(files.train, NET_FIELDS, s, True),
               _source(files.test, NET_FIELDS, s, False), s.epochs, started)


def run_ra(files: TransferFiles, original: OriginalData, spec: ModelSpec, s: TransferSettings) -> MethodResult:
    """RA: a fresh DUPN model (``spec``) + shop head on original-task and shop rows mixed ``1 : ra_mix``."""
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    model = JointShopDUPN(build_model(spec), spec.model.head_hidden, spec.model.dropout)
    weighting = build_weighting(s.weighting, spec.loss_names, last_shared_layer(model.dupn))
    train = MixedBatches(_source(files.train, NET_FIELDS, s, True),
                         _source(original.files, TRAIN_FIELDS, s, True, s.batch_size * s.ra_mix), s.ra_mix)
    result = fit(JointShopTask(model, weighting, s.lr), train, _source(files.test, NET_FIELDS, s, False), s.epochs,
                 started)
    result.notes = (f"budget: {s.ra_mix} original rows per shop row, {result.original_rows:,} of the "
                    f"{original.rows:,} original training rows ({original.days[0]}..{original.days[-1]}) per epoch")
    return result


def run_methods(methods: Sequence[str], files: TransferFiles, champion: DUPNModel, rep_dim: int,
                original: OriginalData | None, s: TransferSettings,
                expected_rows: Mapping[str, int] | None = None) -> list[MethodResult]:
    """Run ``methods`` (a subset of ``METHODS``) one after the other in this process.

    Args:
        expected_rows: ``{"train": n, "test": m}`` rows of the written splits; each method must
            have read exactly these (every epoch reads all of them).

    Raises:
        PlatformError: an unknown method, or ``ra`` without original data.
        DataQualityError: a method read another number of rows than ``expected_rows``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PlatformError(f"unknown transfer methods {unknown}; choose from {list(METHODS)}")
    torch.set_num_threads(s.torch_threads or max(1, os.cpu_count() or 1))
    spec = champion.spec
    out = []
    for m in methods:
        logger.info("transfer method %s (%s)", m, METHOD_NAMES[m])
        if m == "rt":
            out.append(run_rt(files, rep_dim, spec, s))
        elif m == "ft":
            out.append(run_ft(files, champion, s))
        elif m == "rs":
            out.append(run_rs(files, spec, s))
        else:
            if original is None:
                raise PlatformError("method 'ra' needs the original training examples")
            out.append(run_ra(files, original, spec, s))
        r = out[-1]
        if expected_rows is not None and (r.train_rows, r.test_rows) != (expected_rows.get("train"),
                                                                         expected_rows.get("test")):
            raise DataQualityError(f"{m} read {r.train_rows} training and {r.test_rows} test rows, the table holds "
                                   f"{expected_rows.get('train')} and {expected_rows.get('test')}")
    return out


# ---------------------------------------------------------------------- reporting
def comparison_metrics(results: Sequence[MethodResult]) -> dict[str, float]:
    """``<m>_test_auc``, ``<m>_best_test_auc``, ``<m>_seconds``, ``<m>_train_seconds``, ``<m>_epochs`` per method."""
    out: dict[str, float] = {}
    for r in results:
        best, best_epoch = r.best
        out.update({f"{r.method}_test_auc": r.test_auc, f"{r.method}_best_test_auc": best,
                    f"{r.method}_best_epoch": float(best_epoch), f"{r.method}_seconds": r.seconds,
                    f"{r.method}_train_seconds": r.train_seconds, f"{r.method}_epochs": float(len(r.epochs)),
                    f"{r.method}_test_logloss": float(r.epochs[-1]["test_logloss"]) if r.epochs else math.nan})
    return out


def comparison_table(results: Sequence[MethodResult]) -> str:
    """Markdown table: method, test AUC (last epoch), best AUC (epoch), seconds, train seconds, epochs, rows."""
    lines = ["| method | | test AUC | best AUC (epoch) | seconds | train s | epochs | shop train rows "
             "| original rows / epoch | test rows |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        best, be = r.best
        lines.append(f"| {r.method.upper()} | {r.name} | {r.test_auc:.4f} | {best:.4f} ({be}) | {r.seconds:.1f} | "
                     f"{r.train_seconds:.1f} | {len(r.epochs)} | {r.train_rows:,} | {r.original_rows:,} | "
                     f"{r.test_rows:,} |")
    return "\n".join(lines)


def learning_curve_figure(results: Sequence[MethodResult]) -> Any:
    """Test AUC per epoch of every method (left) and against elapsed seconds (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        xs = [e["epoch"] + 1 for e in r.epochs]
        ys = [e["test_auc"] for e in r.epochs]
        ax1.plot(xs, ys, marker="o", label=f"{r.method.upper()} ({r.name})")
        ax2.plot([e["elapsed_seconds"] for e in r.epochs], ys, marker="o", label=r.method.upper())
    ax1.set_xticks(range(1, max((len(r.epochs) for r in results), default=1) + 1))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test AUC (shop preference)")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("wall time (s)")
    ax2.set_ylabel("test AUC")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_comparison(tracker: "Tracker", results: Sequence[MethodResult], params: Mapping[str, Any],
                   context: Mapping[str, Any]) -> str:
    """Log params, the per-epoch curves (``<m>_test_auc`` at steps 1..epochs), the summary metrics, the
    comparison as JSON and markdown, and the learning-curve figure. Returns the markdown table."""
    tracker.log_params(params)
    for r in results:
        for e in r.epochs:
            tracker.log_metrics({f"{r.method}_test_auc": e["test_auc"], f"{r.method}_train_loss":
                                 e.get("train_loss", math.nan), f"{r.method}_elapsed_seconds": e["elapsed_seconds"]},
                                step=int(e["epoch"]) + 1)
    # <m>_test_auc itself is the curve above: its latest value (highest step) is the last epoch's
    tracker.log_metrics({k: v for k, v in comparison_metrics(results).items() if not k.endswith("_test_auc")
                         or k.endswith("_best_test_auc")})
    table = comparison_table(results)
    tracker.log_dict({"context": dict(context), "methods": [r.as_dict() for r in results]},
                     "transfer/comparison.json")
    log_text = getattr(tracker, "log_text", None)
    notes = [f"* {r.method.upper()}: {r.notes}" for r in results if r.notes]
    text = "\n".join([f"# {context.get('title', 'transfer')}", "", table, "", *notes, ""])
    if callable(log_text):
        log_text(text, "transfer/comparison.md")
    else:
        tracker.log_dict({"markdown": text}, "transfer/comparison_md.json")
    if results:
        import matplotlib.pyplot as plt

        fig = learning_curve_figure(results)
        try:
            tracker.log_figure(fig, "transfer/learning_curves.png")
        finally:
            plt.close(fig)
    return table
