"""Ordinary feature tables for multi-task training: split, fit the encoding on the training split, encode.

A user declares a Delta table, its categorical and dense columns and its labels in ``tabular``
(:class:`core.config.TabularConfig`). :func:`build_tabular_set` checks the declared columns, splits
the rows (:class:`core.config.TabularSplit`), learns the categorical vocabularies and the dense
statistics from the **training split only**, and writes ``features/tabular_<name>``: one row per
source row with fixed-length arrays Petastorm feeds to :mod:`training.tabular`,

* ``cat``: one id per categorical column: ``2 + rank`` of the value in the column's vocabulary (the
  most frequent training values first), 1 for a value not in it (unknown), 0 unused;
* ``dense``: the standardised dense columns (``dense_log`` ones first become sign(x) log(1 + |x|)); a
  missing value is the training mean (0). With ``tabular.dense_bins`` set, the encoding also holds each
  dense column's quantile bin edges (in the standardised space), and the model adds the value's
  piecewise-linear encoding over them (:class:`training.tabular.TabularModel`);
* ``labels``: one per task, 0/1 (binary) or the class index (multiclass);

partitioned by ``split`` (train / valid / test). The encoding is stored in the commit's metadata and,
by the trainer, with every model.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from core import tables as t
from core.config import TabularConfig, TabularTask
from core.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.delta import DeltaTables, WriteResult

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
UNKNOWN = 1
FIRST_ID = 2
MISSING = "<null>"  # a null categorical value is a value of its own
HASH_SPACE = 1_000_000
ENCODED_SCHEMA = t.T.StructType([
    t._f("row_id", t.LONG, False), t._f("cat", t.INTS, False), t._f("dense", t.FLOATS, False),
    t._f("labels", t.INTS, False), t._f("split", t.STR, False)])


def encoded_table(name: str) -> t.TableSpec:
    """The encoded examples of tabular dataset ``name``."""
    return t.TableSpec(f"features/tabular_{name}", ENCODED_SCHEMA, partition_by=("split",),
                       description="encoded rows of a declared feature table, by split (features/tabular.py)")


@dataclass(frozen=True)
class Encoding:
    """What turns a source row into model inputs, learned on the training split.

    Attributes:
        categorical: categorical column names, in ``cat`` order.
        vocab: column -> its kept values, most frequent first (id = ``FIRST_ID`` + position).
        dense: dense column names, in ``dense`` order.
        log: dense columns transformed by sign(x) log(1 + |x|) before standardisation.
        mean, std: per dense column, of the (transformed) training values.
        tasks: the label definitions (``TabularTask.model_dump()``), in ``labels`` order.
        bins: ``tabular.dense_bins`` of the build (0: no bins).
        edges: per dense column (when ``bins``), the increasing distinct training quantiles at
            0, 1/bins, ..., 1 of the standardised values: its minimum, the inner edges and its maximum.
    """

    categorical: tuple[str, ...]
    vocab: dict[str, list[str]]
    dense: tuple[str, ...]
    log: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tasks: tuple[dict[str, Any], ...]
    bins: int = 0
    edges: tuple[tuple[float, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"categorical": list(self.categorical), "vocab": {k: list(v) for k, v in self.vocab.items()},
                "dense": list(self.dense), "log": list(self.log), "mean": list(self.mean), "std": list(self.std),
                "tasks": [dict(x) for x in self.tasks], "bins": self.bins, "edges": [list(e) for e in self.edges]}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Encoding":
        """An encoding's dict; one written before dense bins existed has none."""
        return Encoding(tuple(data["categorical"]), {k: list(v) for k, v in data["vocab"].items()},
                        tuple(data["dense"]), tuple(data["log"]), tuple(float(x) for x in data["mean"]),
                        tuple(float(x) for x in data["std"]), tuple(dict(x) for x in data["tasks"]),
                        int(data.get("bins", 0)), tuple(tuple(float(v) for v in e) for e in data.get("edges", [])))

    @property
    def vocab_sizes(self) -> list[int]:
        """Embedding-table size of each categorical column (pad, unknown and the kept values)."""
        return [FIRST_ID + len(self.vocab[c]) for c in self.categorical]


# ---------------------------------------------------------------------- checks
def source_table(tables: "DeltaTables", cfg: TabularConfig) -> "DataFrame":
    """The declared columns of the source table.

    Raises:
        PlatformError: the table, or a declared column, is missing (one line naming it and the key).
    """
    probe = t.TableSpec(cfg.table, t.T.StructType([]))
    if not tables.exists(probe):
        raise PlatformError(f"table {cfg.table} (tabular.table) does not exist under {tables.root}; import it first "
                            f"(e.g. python -m jobs.import_census) or point tabular.table at your table")
    actual = tables.schema(probe)
    present = {f.name: f for f in actual.fields}
    wanted = {cfg.id_column: "tabular.id_column", **{c: "tabular.categorical" for c in cfg.categorical},
              **{c: "tabular.dense" for c in cfg.dense},
              **{x.column: f"tabular.tasks[{x.name}].column" for x in cfg.tasks}}
    for column, key in wanted.items():
        if column not in present:
            raise PlatformError(f"table {cfg.table}: column '{column}' declared in {key} is missing (it has "
                                f"{len(present)} columns: {', '.join(sorted(present)[:12])}...); fix the config")
    spec = t.TableSpec(cfg.table, t.T.StructType([present[c] for c in wanted]))
    return tables.read(spec)


def check_labels(df: "DataFrame", cfg: TabularConfig) -> None:
    """Every label value is one of its task's classes.

    Raises:
        PlatformError: naming the column, an offending value and how many rows hold such values.
    """
    from pyspark.sql import functions as F

    if not cfg.tasks:
        raise PlatformError("tabular.tasks is empty: declare at least one label (name, column, classes)")
    aggs = []
    for task in cfg.tasks:
        bad = ~_text(task.column).isin(task.classes) | F.col(task.column).isNull()
        aggs += [F.sum(bad.cast("long")).alias(f"n_{task.name}"),
                 F.first(F.when(bad, F.coalesce(_text(task.column), F.lit(MISSING))), ignorenulls=True)
                 .alias(f"v_{task.name}")]
    row = df.agg(*aggs).first()
    if row is None:
        return
    for task in cfg.tasks:
        n = int(row[f"n_{task.name}"] or 0)
        if n:
            raise PlatformError(f"table {cfg.table}: column '{task.column}' (task {task.name}) holds {n:,} rows "
                                f"outside its classes, e.g. {row[f'v_{task.name}']!r}; add the value to "
                                f"tabular.tasks[{task.name}].classes or fix the rows")


def check_dense(df: "DataFrame", cfg: TabularConfig) -> None:
    """Every non-null dense value is a number.

    Raises:
        PlatformError: naming the column, an offending value and the count.
    """
    from pyspark.sql import functions as F

    if not cfg.dense:
        return
    aggs = []
    for i, c in enumerate(cfg.dense):
        bad = F.col(c).isNotNull() & F.col(c).cast("double").isNull()
        aggs += [F.sum(bad.cast("long")).alias(f"n{i}"),
                 F.first(F.when(bad, F.col(c).cast("string")), ignorenulls=True).alias(f"v{i}")]
    row = df.agg(*aggs).first()
    if row is None:
        return
    for i, c in enumerate(cfg.dense):
        n = int(row[f"n{i}"] or 0)
        if n:
            raise PlatformError(f"table {cfg.table}: dense column '{c}' holds {n:,} non-numeric values, e.g. "
                                f"{row[f'v{i}']!r}; clean the column or declare it in tabular.categorical")


# ---------------------------------------------------------------------- split
def permutation_splits(n: int, seed: int, test_frac: float, valid_frac: float) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of rows 0..n-1: the first ``int(n * test_frac)`` rows of
    ``default_rng(seed).permutation(n)`` are test, the next ``int(n * valid_frac)`` validation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(n * test_frac), int(n * valid_frac)
    out = np.zeros(n, dtype=np.int8)
    out[perm[:n_test]] = 2
    out[perm[n_test:n_test + n_valid]] = 1
    return out


def assign_split(df: "DataFrame", cfg: TabularConfig) -> "DataFrame":
    """``df`` with a ``split`` column (train / valid / test) as ``tabular.split`` says.

    Raises:
        PlatformError: ``permutation`` over ids that are not exactly 0..n-1.
    """
    from pyspark.sql import functions as F

    s, idc = cfg.split, cfg.id_column
    if s.method == "hash":
        u = (F.pmod(F.xxhash64(F.lit(s.seed), F.col(idc)), F.lit(HASH_SPACE)) / HASH_SPACE)
        return df.withColumn("split", F.when(u < s.test_frac, "test")
                             .when(u < s.test_frac + s.valid_frac, "valid").otherwise("train"))
    row = df.agg(F.count(F.lit(1)).alias("n"), F.min(idc).alias("lo"), F.max(idc).alias("hi"),
                 F.countDistinct(idc).alias("distinct")).first()
    n = int(row["n"]) if row is not None else 0
    if row is None or n == 0:
        raise PlatformError(f"table {cfg.table} has no rows")
    if not (row["lo"] == 0 and row["hi"] == n - 1 and row["distinct"] == n):
        raise PlatformError(f"table {cfg.table}: tabular.split.method=permutation needs {idc} to number the rows "
                            f"0..{n - 1} (found {row['lo']}..{row['hi']}, {row['distinct']:,} distinct of {n:,}); "
                            f"set tabular.split.method=hash")
    codes = permutation_splits(n, s.seed, s.test_frac, s.valid_frac)
    import pandas as pd

    # n small integers on the driver (documented bound of the permutation method)
    lookup = df.sparkSession.createDataFrame(pd.DataFrame({idc: np.arange(n, dtype=np.int64),
                                                           "split_code": codes.astype(np.int32)}))
    name = F.element_at(F.array(*[F.lit(x) for x in SPLITS]), F.col("split_code") + 1)
    return df.join(F.broadcast(lookup), idc).withColumn("split", name).drop("split_code")


# ---------------------------------------------------------------------- encoding
def _text(column: str) -> "Column":
    from pyspark.sql import functions as F

    return F.trim(F.col(column).cast("string"))


def _dense_value(column: str, log: bool) -> "Column":
    from pyspark.sql import functions as F

    x = F.col(column).cast("double")
    return F.signum(x) * F.log1p(F.abs(x)) if log else x


def fit_encoding(train: "DataFrame", cfg: TabularConfig) -> Encoding:
    """Vocabularies (at most ``max_vocab`` values of at least ``min_count`` rows per column) and dense
    means / standard deviations, from the training rows only."""
    from pyspark.sql import functions as F

    from pyspark.sql import Window

    vocab: dict[str, list[str]] = {c: [] for c in cfg.categorical}
    if cfg.categorical:
        # one pass: (column, value) pairs counted together, the top max_vocab per column kept
        pairs = train.select(F.explode(F.array(*[
            F.struct(F.lit(i).alias("c"), F.coalesce(_text(c), F.lit(MISSING)).alias("v"))
            for i, c in enumerate(cfg.categorical)])).alias("p")).select("p.c", "p.v")
        rank = F.row_number().over(Window.partitionBy("c").orderBy(F.desc("count"), "v"))
        kept = (pairs.groupBy("c", "v").count().where(F.col("count") >= cfg.min_count)
                .withColumn("rank", rank).where(F.col("rank") <= cfg.max_vocab))
        for r in sorted(kept.collect(), key=lambda r: (r["c"], r["rank"])):  # <= columns x max_vocab rows
            vocab[cfg.categorical[r["c"]]].append(r["v"])
    mean: list[float] = []
    std: list[float] = []
    if cfg.dense:
        aggs = []
        for i, c in enumerate(cfg.dense):
            x = _dense_value(c, c in cfg.dense_log)
            aggs += [F.avg(x).alias(f"m{i}"), F.stddev_pop(x).alias(f"s{i}")]
        first = train.agg(*aggs).first()
        row = first.asDict() if first is not None else {}
        for i in range(len(cfg.dense)):
            m, sd = row.get(f"m{i}"), row.get(f"s{i}")
            mean.append(float(m) if m is not None else 0.0)
            std.append(float(sd) if sd is not None and sd > 1e-12 and math.isfinite(sd) else 1.0)
    bins = dense_bins(cfg)
    edges = dense_edges(train, cfg, mean, std) if bins else ()
    return Encoding(tuple(cfg.categorical), vocab, tuple(cfg.dense), tuple(cfg.dense_log), tuple(mean), tuple(std),
                    tuple(task.model_dump(mode="json") for task in cfg.tasks), bins, edges)


def dense_bins(cfg: TabularConfig) -> int:
    """The bins an encoding built with ``cfg`` records: ``tabular.dense_bins``, 0 without a dense column."""
    return cfg.dense_bins if cfg.dense else 0


def dense_edges(train: "DataFrame", cfg: TabularConfig, mean: list[float], std: list[float]) \
        -> tuple[tuple[float, ...], ...]:
    """Per dense column, the distinct quantiles at 0, 1/bins, ..., 1 of its standardised training values
    (Spark's ``approxQuantile``, rank error at most a tenth of a bin; 0 and 1 are the exact minimum and
    maximum), rounded to float32 as the model holds them. A column with no value gets none."""
    names = [f"x{i}" for i in range(len(cfg.dense))]
    values = train.select(*[((_dense_value(c, c in cfg.dense_log) - m) / s).alias(x)
                            for c, m, s, x in zip(cfg.dense, mean, std, names)])
    probs = [i / cfg.dense_bins for i in range(cfg.dense_bins + 1)]
    quantiles = values.approxQuantile(names, probs, min(1e-3, 0.1 / cfg.dense_bins))
    return tuple(tuple(float(v) for v in np.unique(np.asarray(q, dtype=np.float32))) for q in quantiles)


def _label(task: TabularTask) -> "Column":
    from pyspark.sql import functions as F

    value = _text(task.column)
    if task.kind == "binary":
        return (value == F.lit(task.positive)).cast("int")
    index = F.create_map(*[x for i, cls in enumerate(task.classes) for x in (F.lit(cls), F.lit(i))])
    return index[value].cast("int")


def encode(df: "DataFrame", enc: Encoding, cfg: TabularConfig) -> "DataFrame":
    """Rows of ``df`` (with ``split``) as ``ENCODED_SCHEMA`` rows."""
    from pyspark.sql import functions as F

    cats = []
    for c in enc.categorical:
        values = enc.vocab[c]
        if values:
            ids = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(FIRST_ID + i))])
            cats.append(F.coalesce(ids[F.coalesce(_text(c), F.lit(MISSING))], F.lit(UNKNOWN)).cast("int"))
        else:
            cats.append(F.lit(UNKNOWN).cast("int"))
    dense = [F.coalesce(((_dense_value(c, c in enc.log) - F.lit(m)) / F.lit(s)), F.lit(0.0)).cast("float")
             for c, m, s in zip(enc.dense, enc.mean, enc.std)]
    labels = [_label(task) for task in cfg.tasks]
    return df.select(F.col(cfg.id_column).cast("long").alias("row_id"),
                     (F.array(*cats) if cats else F.array().cast("array<int>")).alias("cat"),
                     (F.array(*dense) if dense else F.array().cast("array<float>")).alias("dense"),
                     F.array(*labels).alias("labels"), "split")


@dataclass(frozen=True)
class TabularSet:
    """The encoded examples of one build."""

    table: t.TableSpec
    version: int
    encoding: Encoding
    rows: dict[str, int]
    files: dict[str, tuple[str, ...]]

    def describe(self) -> str:
        counts = ", ".join(f"{s} {self.rows.get(s, 0):,}" for s in SPLITS)
        return f"{self.table.name} v{self.version}: {counts} rows"


def build_tabular_set(tables: "DeltaTables", cfg: TabularConfig, metadata: Mapping[str, Any] | None = None) \
        -> "WriteResult":
    """Check, split, fit on the training split, encode and write ``features/tabular_<name>`` (the whole
    table is replaced; the encoding and the split go into the commit metadata)."""
    from pyspark.sql import functions as F

    df = source_table(tables, cfg)
    check_labels(df, cfg)
    check_dense(df, cfg)
    split = assign_split(df, cfg).cache()
    try:
        rows = {r["split"]: int(r["count"]) for r in split.groupBy("split").count().collect()}
        empty = [s for s in SPLITS if not rows.get(s)]
        if empty:
            raise PlatformError(f"table {cfg.table}: the {'/'.join(empty)} split is empty ({rows}); use more rows or "
                                f"other tabular.split fractions")
        enc = fit_encoding(split.where(F.col("split") == "train"), cfg)
        spec = encoded_table(cfg.name)
        source_version = tables.version(t.TableSpec(cfg.table, t.T.StructType([])))
        meta = {"encoding": enc.to_dict(), "split": cfg.split.model_dump(mode="json"), "rows": rows,
                "source": {"table": cfg.table, "version": source_version}, **(metadata or {})}
        return tables.write(encode(split, enc, cfg), spec, mode="overwrite", metadata=meta)
    finally:
        split.unpersist()


def load_tabular_set(tables: "DeltaTables", cfg: TabularConfig) -> TabularSet:
    """The latest build of ``features/tabular_<name>``: its encoding and the Parquet files of each split.

    Raises:
        PlatformError: not built yet, or built with another split or other tasks than the config's.
    """
    spec = encoded_table(cfg.name)
    if not tables.exists(spec):
        raise PlatformError(f"table {spec.name} does not exist: run python -m jobs.build_tabular_set first")
    meta = tables.last_metadata(spec)
    if "encoding" not in meta:
        raise PlatformError(f"table {spec.name}: its last commit holds no encoding; rebuild it with "
                            f"python -m jobs.build_tabular_set")
    enc = Encoding.from_dict(meta["encoding"])
    wanted = tuple(task.model_dump(mode="json") for task in cfg.tasks)
    if enc.tasks != wanted or meta.get("split") != cfg.split.model_dump(mode="json") \
            or list(enc.categorical) != cfg.categorical or list(enc.dense) != cfg.dense:
        raise PlatformError(f"table {spec.name} was built with other columns, tasks or split than tabular.* "
                            f"now declares; rebuild it with python -m jobs.build_tabular_set")
    if enc.bins != dense_bins(cfg):
        raise PlatformError(f"table {spec.name} was built with tabular.dense_bins={enc.bins}, the config says "
                            f"{cfg.dense_bins}; rebuild it with python -m jobs.build_tabular_set")
    files = tables.files(spec)
    by_split = {s: tuple(sorted(f for f in files if f"/split={s}/" in f)) for s in SPLITS}
    return TabularSet(spec, tables.version(spec), enc, {k: int(v) for k, v in meta.get("rows", {}).items()},
                      by_split)
