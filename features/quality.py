"""Input validation: contract schema checks at job start, row-level quarantine with counts.

A job reads an input table through :func:`validated`: the schema is checked against
CONTRACT.md (one-line :class:`SchemaError` naming table, column, expected and found type),
then each row gets the first failing check as its ``reason``. Valid rows go on; rejected
rows are written to ``quarantine/<table>`` (partition ``dt`` = the job's date, ``job``)
as JSON with their reason, and counted in the job summary. A job fails when the
quarantined share of a table exceeds ``quality.max_quarantine_share``, before it writes
any output.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from pyspark.sql import types as T

from core import tables as t
from core.errors import DataQualityError
from core.tables import TableSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.delta import DeltaTables

logger = logging.getLogger(__name__)

BEHAVIORS = ("click", "cart", "fav", "buy")

QUARANTINE_SCHEMA = T.StructType([
    T.StructField("reason", T.StringType(), False), T.StructField("row_json", T.StringType(), False),
    T.StructField("run_id", T.StringType(), False), T.StructField("dt", T.StringType(), False),
    T.StructField("job", T.StringType(), False)])


def quarantine_spec(source: TableSpec) -> TableSpec:
    """``quarantine/<table>``: rejected rows of ``source``, partitioned by the job's date and the job."""
    return TableSpec(f"quarantine/{source.name.split('/', 1)[1]}", QUARANTINE_SCHEMA, ("dt", "job"),
                     f"rejected rows of {source.name}")


def _end_of(day: _dt.date) -> _dt.datetime:
    return _dt.datetime.combine(day + _dt.timedelta(days=1), _dt.time())


def row_checks(spec: TableSpec, as_of: _dt.date, rank_dim: int) -> list[tuple[str, "Column"]]:
    """(reason, condition that is true for a bad row) of each table, in priority order.

    Snapshot tables (``raw/items``, ``raw/users``): a quarantined row's id is then unknown to the
    jobs, which treat it like an id missing from the snapshot (unknown attributes, log price 0)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def null_any(*cols: str) -> "Column":
        cond = F.lit(False)
        for c in cols:
            cond = cond | F.col(c).isNull()
        return cond

    def binary(col: str) -> "Column":
        return F.col(col).isNull() | ~F.col(col).isin(0, 1)

    def conflicting(key: str) -> "Column":  # a snapshot's rows disagreeing on one key (exact copies are merged first)
        return F.count(F.lit(1)).over(Window.partitionBy(key)) > 1

    future = F.col("event_time") >= F.lit(_end_of(as_of))
    dt_mismatch = F.to_date("event_time").cast("string") != F.col("dt")
    checks: list[tuple[str, Column]] = []
    if spec is t.EVENTS:
        checks = [("null_id", null_any("user_id", "item_id")),
                  ("unknown_behavior", F.col("behavior").isNull() | ~F.col("behavior").isin(*BEHAVIORS)),
                  ("null_event_time", F.col("event_time").isNull()),
                  ("future_event_time", future), ("dt_mismatch", dt_mismatch)]
    elif spec is t.IMPRESSIONS:
        checks = [("null_id", null_any("user_id", "item_id")),
                  ("null_event_time", F.col("event_time").isNull()), ("future_event_time", future),
                  ("dt_mismatch", dt_mismatch),
                  ("bad_label", binary("clicked") | binary("carted") | binary("bought")
                   | ((F.col("bought") == 1) & (F.col("clicked") == 0))),
                  ("bad_rank_features", F.col("rank_features").isNull()
                   | (F.size("rank_features") != rank_dim)
                   | F.exists("rank_features", lambda x: x.isNull() | F.isnan(x)))]
    elif spec is t.FOLLOWS:
        checks = [("null_id", null_any("user_id", "talent_id")),
                  ("null_event_time", F.col("event_time").isNull()), ("future_event_time", future),
                  ("dt_mismatch", dt_mismatch), ("bad_label", binary("followed"))]
    elif spec is t.PPP_LABELS:
        checks = [("null_id", null_any("user_id")),
                  ("bad_label", F.col("tier").isNull() | (F.col("tier") < 1) | (F.col("tier") > 7)),
                  ("future_label", F.col("dt") > F.lit(as_of.isoformat()))]
    elif spec is t.SHOP_PREFS:
        checks = [("null_id", null_any("user_id", "shop_id")),
                  ("null_event_time", F.col("event_time").isNull()), ("future_event_time", future),
                  ("dt_mismatch", dt_mismatch), ("bad_label", binary("label"))]
    elif spec is t.ITEMS:
        price = F.col("price")
        checks = [("null_id", null_any("item_id")),
                  ("bad_price", price.isNotNull() & (F.isnan(price) | (price < 0) | (price == float("inf")))),
                  ("conflicting_rows", conflicting("item_id"))]
    elif spec is t.USERS:
        checks = [("null_id", null_any("user_id")), ("conflicting_rows", conflicting("user_id"))]
    return checks


@dataclass
class Validated:
    """Valid rows of one input table, and what was rejected."""

    spec: TableSpec
    valid: "DataFrame"
    rejected: "DataFrame"
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    source: "DataFrame | None" = None
    hints: tuple[str, ...] = ()  # config keys that may explain a reason, for the failure line

    @property
    def quarantined(self) -> int:
        return sum(self.counts.values())

    @property
    def share(self) -> float:
        return self.quarantined / self.total if self.total else 0.0

    def describe(self) -> str:
        if not self.counts:
            return f"{self.spec.name}: {self.total:,} rows, none quarantined"
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(self.counts.items()))
        return f"{self.spec.name}: {self.total:,} rows, {self.quarantined:,} quarantined ({reasons})"


def validated(df: "DataFrame", spec: TableSpec, as_of: _dt.date, rank_dim: int = 8) -> Validated:
    """Check ``df`` (an input table) against its contract and split valid from rejected rows.

    The frame is persisted (it is read twice: for the counts and by the job); call
    :func:`release` on the result when the job is done. Exact duplicate rows keep one copy;
    the others are rejected with reason ``duplicate``.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spec.validate(df.schema)
    df = df.select(spec.columns)
    reason: Column = F.lit(None).cast("string")
    for name, bad in reversed(row_checks(spec, as_of, rank_dim)):
        reason = F.when(F.coalesce(bad, F.lit(False)), F.lit(name)).otherwise(reason)
    # exact duplicates: one hash aggregation (no sort); a copy of each valid row stays valid
    grouped = (df.groupBy(*spec.columns).agg(F.count(F.lit(1)).alias("_n")).withColumn("_reason", reason)
               .persist(StorageLevel.MEMORY_AND_DISK))
    stats = grouped.groupBy("_reason").agg(F.sum("_n").alias("rows"), F.sum(F.col("_n") - 1).alias("extra")).collect()
    counts: dict[str, int] = {}
    for r in stats:  # one row per reason: bounded
        if r["_reason"] is None:
            if r["extra"]:
                counts["duplicate"] = int(r["extra"])
        else:
            counts[r["_reason"]] = int(r["rows"])
    total = sum(int(r["rows"]) for r in stats)
    valid = grouped.where(F.col("_reason").isNull()).drop("_n", "_reason")
    copies = F.when(F.col("_reason").isNull(), F.col("_n") - 1).otherwise(F.col("_n"))
    rejected = (grouped.where(F.col("_reason").isNotNull() | (F.col("_n") > 1))
                .withColumn("_copy", F.explode(F.sequence(F.lit(1), F.greatest(copies, F.lit(1)))))
                .where(copies > 0)
                .withColumn("_reason", F.coalesce(F.col("_reason"), F.lit("duplicate"))).drop("_n", "_copy"))
    hints = ((f"bad_rank_features counts rows whose rank_features are not {rank_dim} finite values "
              f"(inputs.rank_features_dim={rank_dim}); if the upstream's length changed, set "
              f"inputs.rank_features_dim to it",) if counts.get("bad_rank_features") else ())
    return Validated(spec, valid, rejected, total, counts, grouped, hints)


def release(*results: Validated) -> None:
    """Drop the persisted frames of :func:`validated` results."""
    for r in results:
        if r.source is not None:
            r.source.unpersist()


def write_quarantine(tables: "DeltaTables", results: Sequence[Validated], day: _dt.date, job: str,
                     run_id: str) -> None:
    """Replace partition (``day``, ``job``) of ``quarantine/<table>`` with each table's rejected rows."""
    from pyspark.sql import functions as F

    for r in results:
        spec = quarantine_spec(r.spec)
        if not r.quarantined and not tables.exists(spec):
            continue
        rows = r.rejected.select(
            F.col("_reason").alias("reason"),
            F.to_json(F.struct(*[F.col(c) for c in r.spec.columns])).alias("row_json"),
            F.lit(run_id).alias("run_id"), F.lit(day.isoformat()).alias("dt"), F.lit(job).alias("job"))
        tables.write(rows, spec, "overwrite", replace={"dt": day.isoformat(), "job": job},
                     metadata={"job": job, "run_id": run_id, "counts": r.counts})


def enforce_bound(tables: "DeltaTables", results: Sequence[Validated], day: _dt.date, job: str,
                  run_id: str, max_share: float) -> list[str]:
    """Fail, before the job writes its output, when a table's quarantined share exceeds ``max_share``.

    On failure only the quarantine is written (so the rejected rows can be inspected) and
    :class:`DataQualityError` names the table, its share and the reasons. Otherwise returns one
    summary line per table; the job writes the quarantine with :func:`write_quarantine` after
    its output, so a run that fails midway changes no table.
    """
    too_many = [f"{r.spec.name} {r.share:.2%} > {max_share:.2%} ({r.describe()})"
                for r in results if r.share > max_share]
    if too_many:
        write_quarantine(tables, results, day, job, run_id)
        hints = [h for r in results if r.share > max_share for h in r.hints]
        raise DataQualityError(
            "too many rows quarantined: " + "; ".join(too_many) + "".join(f"; {h}" for h in hints)
            + "; inspect quarantine/<table> and fix the upstream data or raise quality.max_quarantine_share")
    return [r.describe() for r in results]
