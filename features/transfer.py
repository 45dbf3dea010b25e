"""The transfer job's data side: ``features/transfer_examples`` and the inputs of each method (Spark only).

The shop-preference task (``raw/shop_prefs``, never used to train the shared representation)
joined, point in time, with what each transfer method reads about the user: the snapshot of
``features/user_sequences`` and the published vector of ``outputs/user_representations`` of
day S, the end of which is the instant every method sees the users at. The models and the
training loops are :mod:`training.transfer`; the protocol (the user-hash split into train /
validation / test, the choice of each method's epoch on validation) is docs/transfer.md.

For ``--date D`` the examples are the shop impressions of days (S, D] with S = D - days.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from core import protocol as pr
from core import tables as t
from core.errors import DataQualityError, PlatformError
from core.tables import TableSpec
from features.encoding import UNKNOWN, hashed
from features.sequences import end_of_day

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.delta import DeltaTables

logger = logging.getLogger(__name__)

SPLITS = pr.SPLITS  # ("train", "valid", "test")
# Row fingerprint of a split: (rows, Σ pmod(example_id, FINGERPRINT_MOD) mod FINGERPRINT_MOD); the same
# sum is taken by every method over the rows it read (training.transfer).
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
     _f("shop_dense", T.ArrayType(T.FloatType())), _f("shop_log_price", T.FloatType()),
     _f("embedding", T.ArrayType(T.FloatType())),
     _f("rep_model_version", T.StringType())]
    + _USER_SIDE
    + [_f("snapshot_dt", T.StringType()), _f("split", T.StringType()), _f("dt", T.StringType())]),
    ("dt", "split"),
    "shop-preference examples of days (S, dt] with the users' sequences and published vectors as of the end "
    "of S; split train/valid/test by a hash of user_id (jobs/transfer.py)")

SHOP_FIELDS = ("shop", "shop_category", "shop_dense", "shop_log_price")
# standardised over the shops of raw/items: the mean log price of a shop's items, the mean of their log price
# minus their category's mean log price (its price level within the categories it sells in), its log item count
SHOP_DENSE = ("mean_log_price", "mean_rel_log_price", "log_items")


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
        PlatformError: the partition is empty or mixes model versions.
    """
    rows = (tables.read(t.USER_REPRESENTATIONS, dt=snapshot_day).select("model_version").distinct()
            .limit(2).collect())  # <= 2 rows
    if len(rows) != 1:
        raise PlatformError(f"outputs/user_representations dt={snapshot_day} holds "
                            f"{'no rows' if not rows else 'several model versions'}: re-run "
                            f"publish_user_representations --date {snapshot_day}, or pass --model-version N")
    return str(rows[0]["model_version"])


def check_shares(validation_share: float, test_share: float) -> None:
    """Raises:
        PlatformError: the shares leave no training user (``validation_share + test_share >= 1``)."""
    if not (0 < validation_share and 0 < test_share and validation_share + test_share < 1):
        raise PlatformError(f"transfer.validation_share={validation_share} and transfer.test_share={test_share} "
                            f"must be positive and leave training users (sum below 1)")


def split_of(user_id: "Column", validation_share: float, test_share: float, seed: int) -> "Column":
    """The user's split: with u = :func:`core.protocol.user_uniform` (salt ``transfer_split``),
    ``"test"`` for u < ``test_share``, ``"valid"`` for the next ``validation_share``, else ``"train"``.

    A deterministic function of the user id and ``seed``: all of a user's examples are on one side.

    Raises:
        PlatformError: see :func:`check_shares`.
    """
    from pyspark.sql import functions as F

    check_shares(validation_share, test_share)
    u = pr.user_uniform(user_id, seed, "transfer_split")
    return (F.when(u < F.lit(test_share), F.lit(pr.TEST))
            .when(u < F.lit(test_share + validation_share), F.lit(pr.VALID))
            .otherwise(F.lit(pr.TRAIN)))


def shop_features(items: "DataFrame", shop_buckets: int, category_buckets: int) -> "DataFrame":
    """``raw/items`` -> one row per shop: ``shop`` (hashed id), ``shop_category`` (the hashed id of
    the shop's most frequent item category, the index of ``seq_category``) and ``shop_dense``
    (``SHOP_DENSE``, standardised over the shops: the mean log price of its items, the mean of their
    log price relative to their category's mean log price over ``raw/items``, and its log item count),
    and ``shop_log_price``, the mean log price itself (log1p, as ``seq_log_price``; 0 without a price):
    a model relates it to its own reference price of the shop's category, in the units of the prices
    it learned users by.

    The relative price is the shop's price level whatever it sells: categories' price scales differ
    far more than a shop's level moves its prices within one, so the absolute mean mostly says which
    category a shop is in. The category means are one small aggregate (broadcast); the standardising
    moments one aggregate row; nothing per shop reaches the driver.
    """
    from pyspark.sql import functions as F

    log_price = F.log1p("price")
    category_price = items.groupBy("category_id").agg(F.avg(log_price).alias("category_log_price"))
    per_shop = (items.where(F.col("shop_id").isNotNull())
                .join(F.broadcast(category_price), "category_id", "left")
                .groupBy("shop_id")
                .agg(F.mode("category_id").alias("category_id"),
                     F.coalesce(F.avg(log_price), F.lit(0.0)).alias("mean_log_price"),
                     F.coalesce(F.avg(log_price - F.col("category_log_price")), F.lit(0.0))
                     .alias("mean_rel_log_price"),
                     F.log1p(F.count(F.lit(1)).cast("double")).alias("log_items")))
    moments = per_shop.agg(*[F.avg(c).alias(f"m_{c}") for c in SHOP_DENSE],
                           *[F.stddev_pop(c).alias(f"s_{c}") for c in SHOP_DENSE]).first()
    if moments is None:  # a global aggregate has exactly one row, even over no shop
        raise DataQualityError("raw/items: the shop aggregate returned no row")
    z = [((F.col(c) - F.lit(float(moments[f"m_{c}"] or 0.0))) / F.lit(max(float(moments[f"s_{c}"] or 0.0), 1e-6)))
         .cast("float") for c in SHOP_DENSE]
    return per_shop.select(
        "shop_id", hashed(F.col("shop_id"), "shop_id", shop_buckets).alias("shop"),
        hashed(F.col("category_id"), "category_id", category_buckets).alias("shop_category"),
        F.array(*z).alias("shop_dense"), F.col("mean_log_price").cast("float").alias("shop_log_price"))


def transfer_examples(labels: "DataFrame", sequences: "DataFrame", representations: "DataFrame",
                      items: "DataFrame", window: TransferWindow, shop_buckets: int, category_buckets: int,
                      validation_share: float, test_share: float, seed: int) -> "DataFrame":
    """Rows of ``features/transfer_examples`` partition ``window.day``.

    Args:
        labels: valid ``raw/shop_prefs`` rows (any days; only the window's are used).
        sequences: ``features/user_sequences`` (only ``dt = snapshot`` is used).
        representations: ``outputs/user_representations`` (only ``dt = snapshot`` is used).
        items: ``raw/items`` (the shop features, :func:`shop_features`).
        window: the example days and the snapshot day.
        shop_buckets, category_buckets: ``sequences.hash_buckets`` of shop_id and category_id
            (the indices of ``seq_shop`` and ``seq_category``).
        validation_share, test_share, seed: the user-hash split (:func:`split_of`).

    Examples whose user is absent from the snapshot (no behaviour in the look-back window
    ending with S, or not scored) are dropped: every method then sees exactly the same rows.

    Raises:
        PlatformError: shares that leave no training user.
    """
    from pyspark.sql import functions as F

    split = split_of(F.col("user_id"), validation_share, test_share, seed)
    start, end = end_of_day(window.snapshot_day), end_of_day(window.day)
    ex = (labels.where(F.col("dt").isin(*window.example_days) & (F.col("event_time") >= F.lit(start))
                       & (F.col("event_time") < F.lit(end)))
          .select(F.xxhash64(F.lit("shop_pref"), "user_id", "shop_id", "event_time").alias("example_id"),
                  "user_id", "shop_id", "event_time", F.col("dt").alias("example_dt"),
                  F.col("label").cast("int").alias("label")))
    shops = shop_features(items, shop_buckets, category_buckets).drop("shop")
    unknown = F.array(*[F.lit(0.0).cast("float")] * len(SHOP_DENSE))
    ex = (ex.join(F.broadcast(shops), "shop_id", "left")
          .select(*ex.columns, hashed(F.col("shop_id"), "shop_id", shop_buckets).alias("shop"),
                  F.coalesce("shop_category", F.lit(UNKNOWN)).alias("shop_category"),
                  F.coalesce("shop_dense", unknown).alias("shop_dense"),
                  F.coalesce("shop_log_price", F.lit(0.0).cast("float")).alias("shop_log_price")))
    seq = sequences.where(F.col("dt") == window.snapshot).select("user_id", *USER_SIDE_COLUMNS)
    rep = (representations.where(F.col("dt") == window.snapshot)
           .select("user_id", "embedding", F.col("model_version").alias("rep_model_version")))
    out = (ex.join(seq, "user_id").join(rep, "user_id")
           .withColumn("snapshot_dt", F.lit(window.snapshot))
           .withColumn("split", split)
           .withColumn("dt", F.lit(window.day.isoformat())))
    return TRANSFER_EXAMPLES.conform(out)


@dataclass(frozen=True)
class ExampleStats:
    """Aggregates of one written partition, per split (one Spark aggregation, nothing row-sized collected).

    ``fingerprints[split]`` is ``(rows, Σ pmod(example_id, FINGERPRINT_MOD) mod FINGERPRINT_MOD)``: what
    every method must have read of that split.
    """

    rows: dict[str, int]
    positives: dict[str, int]
    users: dict[str, int]
    fingerprints: dict[str, tuple[int, int]]
    rep_dim: int
    rep_model_versions: tuple[str, ...]

    def describe(self) -> str:
        return "; ".join(f"{s} {self.rows.get(s, 0):,} rows / {self.users.get(s, 0):,} users "
                         f"({self.positives.get(s, 0) / max(self.rows.get(s, 0), 1):.1%} positive)" for s in SPLITS)


def describe_examples(df: "DataFrame") -> ExampleStats:
    """Rows, positives, users and the row fingerprint per split, and the (single) embedding length.

    Raises:
        DataQualityError: embeddings of different lengths.
        PlatformError: an empty split (the window or the shares are too small).
    """
    from pyspark.sql import functions as F

    per = df.groupBy("split").agg(
        F.count(F.lit(1)).alias("rows"), F.sum("label").alias("pos"), F.countDistinct("user_id").alias("users"),
        F.sum(F.pmod("example_id", F.lit(FINGERPRINT_MOD))).alias("fp"),
        F.min(F.size("embedding")).alias("dmin"), F.max(F.size("embedding")).alias("dmax"),
        F.collect_set("rep_model_version").alias("versions")).collect()  # <= 3 rows
    rows = {r["split"]: int(r["rows"]) for r in per}
    empty = [s for s in SPLITS if not rows.get(s)]
    if empty:
        raise PlatformError(f"features/transfer_examples has no {' or '.join(empty)} rows ({rows}); widen the "
                            f"window (--days) or change transfer.validation_share / transfer.test_share")
    dims = {int(r["dmin"]) for r in per} | {int(r["dmax"]) for r in per}
    if len(dims) != 1:
        raise DataQualityError(f"features/transfer_examples: embeddings of lengths {sorted(dims)}; the published "
                               f"partition mixes model versions, re-run publish_user_representations for it")
    versions = tuple(sorted({v for r in per for v in r["versions"]}))
    return ExampleStats(rows, {r["split"]: int(r["pos"] or 0) for r in per},
                        {r["split"]: int(r["users"]) for r in per},
                        {r["split"]: (int(r["rows"]), int(r["fp"] or 0) % FINGERPRINT_MOD) for r in per},
                        dims.pop(), versions)


@dataclass(frozen=True)
class TransferFiles:
    """Parquet files of one table version of the transfer examples, per split."""

    version: int
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]


def transfer_files(tables: "DeltaTables", day: str, version: int) -> TransferFiles:
    """The files of partition ``dt = day`` of table version ``version``, by split (``split=`` folder)."""
    files = tables.files(TRANSFER_EXAMPLES, dt=day, version=version)

    def of(split: str) -> tuple[str, ...]:
        return tuple(sorted(f for f in files if f"/split={split}/" in f))

    return TransferFiles(version, of(pr.TRAIN), of(pr.VALID), of(pr.TEST))


@dataclass(frozen=True)
class OriginalData:
    """The original tasks' training examples ``ra`` retrains on (training-split days up to the snapshot)."""

    version: int
    days: tuple[str, ...]
    files: tuple[str, ...]
    rows: int


def original_training_data(tables: "DeltaTables", until: str, table: TableSpec = t.TRAINING_EXAMPLES) \
        -> OriginalData:
    """The training-split days of ``features/training_examples`` on or before ``until`` (of ``table``: the
    hybrid examples for a base model that reads side inputs, ``features/hybrid.py``).

    The splits are the ``splits`` of the table version's commit metadata (written by
    build_training_set); validation and test days are never used, whatever their date. The
    chosen partitions are checked to hold training-split rows only.

    Raises:
        PlatformError: the table is missing, its commit metadata has no ``splits``, or no training
            day is on or before ``until``.
        DataQualityError: a chosen partition holds rows of another split.
    """
    from pyspark.sql import functions as F

    builder = t.BUILT_BY[table.name]
    if not tables.exists(table):
        raise PlatformError(f"{table.name} does not exist (needed by the 'ra' method): run {builder}, or "
                            f"leave 'ra' out of --methods")
    version = tables.version(table)
    splits = tables.metadata(table, version).get("splits") or {}
    if not isinstance(splits, dict) or pr.TRAIN not in splits:
        raise PlatformError(f"{table.name} version {version} records no 'splits' in its commit "
                            f"metadata (needed by 'ra' to tell training days from validation and test days): "
                            f"rebuild it with {builder}")
    held = {d for s in (pr.VALID, pr.TEST) for d in splits.get(s) or []}
    present = set(tables.partitions(table, version))
    days = sorted(d for d in splits[pr.TRAIN] if d <= until and d in present and d not in held)
    if not days:
        raise PlatformError(f"{table.name} has no training-split day on or before {until} (its "
                            f"training days: {list(splits[pr.TRAIN])}; needed by 'ra'): run {builder} with a range "
                            f"that ends after {until}")
    counts = {r["split"]: int(r["n"]) for r in tables.read(table, dt=days, version=version)
              .groupBy("split").agg(F.count(F.lit(1)).alias("n")).collect()}  # <= 3 rows
    other = {s: n for s, n in counts.items() if s != pr.TRAIN}
    if other:
        raise DataQualityError(f"{table.name} days {days[0]}..{days[-1]} (training days by the "
                               f"commit metadata) hold rows of other splits {other}; rebuild the training set")
    return OriginalData(version, tuple(days), tuple(tables.files(table, days, version)),
                        counts.get(pr.TRAIN, 0))
