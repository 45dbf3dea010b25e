"""The Delta table interface contract, run against every engine available here."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.delta import DeltaTables, RsDeltaTables, SparkDeltaTables
from core.errors import PlatformError, SchemaError, TableNotFound
from core.spark import delta_spark_available
from core.tables import TableSpec

SPEC = TableSpec("test/things", T.StructType([
    T.StructField("user_id", T.LongType(), False), T.StructField("score", T.FloatType(), True),
    T.StructField("tags", T.ArrayType(T.StringType()), True), T.StructField("ts", T.TimestampType(), False),
    T.StructField("dt", T.StringType(), False)]), ("dt",))
SNAPSHOT = TableSpec("test/snapshot", T.StructType([
    T.StructField("k", T.LongType(), False), T.StructField("v", T.StringType(), True)]))


@pytest.fixture(params=["rs", "spark"])
def tables(request, spark, tmp_path: Path) -> DeltaTables:
    if request.param == "spark":
        if not delta_spark_available(spark):
            reason = ("delta-spark engine not tested: the Delta jars are not on the class path (Maven is "
                      "unreachable here); set DELTA_SPARK_JARS=/path/delta-spark.jar,/path/delta-storage.jar")
            print(reason)
            pytest.skip(reason)
        return SparkDeltaTables(spark, str(tmp_path / "lake"))
    return RsDeltaTables(spark, str(tmp_path / "lake"))


def rows(spark, day: str, ids: range, score: float = 1.0):
    ts = dt.datetime.fromisoformat(day + "T12:00:00")
    return spark.createDataFrame([(i, score, ["a", "b"], ts, day) for i in ids],
                                 "user_id bigint, score float, tags array<string>, ts timestamp, dt string")


def counts(df) -> dict[str, int]:
    return {r["dt"]: r["count"] for r in df.groupBy("dt").count().collect()}


def test_create_append_read_history(spark, tables: DeltaTables) -> None:
    assert not tables.exists(SPEC)
    r0 = tables.write(rows(spark, "2026-11-01", range(10)), SPEC, metadata={"job": "a", "n": 1})
    assert r0.version == 0 and r0.rows in (10, None)
    r1 = tables.write(rows(spark, "2026-11-02", range(5)), SPEC, metadata={"job": "b"})
    assert r1.version == 1
    df = tables.read(SPEC)
    assert df.columns == SPEC.columns
    assert counts(df) == {"2026-11-01": 10, "2026-11-02": 5}
    assert dict((f.name, f.dataType) for f in df.schema.fields) == \
        dict((f.name, f.dataType) for f in SPEC.schema.fields)
    hist = tables.history(SPEC)
    assert [c.version for c in hist] == [1, 0]
    assert hist[0].metadata["job"] == "b" and hist[1].metadata["n"] == 1
    assert hist[0].metadata["engine"] == tables.engine
    assert tables.partitions(SPEC) == ["2026-11-01", "2026-11-02"]


def test_replace_partition_touches_only_that_partition(spark, tables: DeltaTables) -> None:
    tables.write(rows(spark, "2026-11-01", range(10)), SPEC)
    tables.write(rows(spark, "2026-11-02", range(7)), SPEC)
    tables.replace_partition(rows(spark, "2026-11-02", range(3), score=2.0), SPEC, "2026-11-02")
    df = tables.read(SPEC)
    assert counts(df) == {"2026-11-01": 10, "2026-11-02": 3}
    assert {r.score for r in df.where("dt = '2026-11-02'").collect()} == {2.0}
    # re-running the same replacement is idempotent
    tables.replace_partition(rows(spark, "2026-11-02", range(3), score=2.0), SPEC, "2026-11-02")
    assert counts(tables.read(SPEC)) == {"2026-11-01": 10, "2026-11-02": 3}
    # an empty result empties exactly that partition
    tables.replace_partition(rows(spark, "2026-11-02", range(0)), SPEC, "2026-11-02")
    assert counts(tables.read(SPEC)) == {"2026-11-01": 10}


def test_replace_partition_with_files_a_stage_writes(spark, tables: DeltaTables, tmp_path: Path) -> None:
    """Files written by the caller (the nightly job's tasks, with pyarrow) replace exactly one partition in
    one commit carrying the stage's metadata; a stage that raises commits nothing and leaves no files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.representations import local_paths

    tables.write(rows(spark, "2026-11-01", range(10)), SPEC)
    tables.write(rows(spark, "2026-11-02", range(7)), SPEC)
    ts = dt.datetime(2026, 11, 2, 12)

    def stage(folder: str, n: int = 3) -> dict[str, int]:
        target = (local_paths([f"{folder}/dt=2026-11-02"]) or [""])[0]
        os.makedirs(target)
        for part in range(2):
            pq.write_table(pa.table({"user_id": pa.array(range(part * n, part * n + n), pa.int64()),
                                     "score": pa.array([2.0] * n, pa.float32()),
                                     "tags": pa.array([["x"]] * n, pa.list_(pa.string())),
                                     "ts": pa.array([ts] * n, pa.timestamp("us"))}), f"{target}/part-{part}.parquet")
        return {"rows": 2 * n}

    res = tables.replace_partition_files(SPEC, "2026-11-02", stage, {"job": "files"})
    assert res.version == 2 and res.rows in (6, None)
    df = tables.read(SPEC)
    assert counts(df) == {"2026-11-01": 10, "2026-11-02": 6}
    assert {(r.user_id, r.score, tuple(r.tags)) for r in df.where("dt = '2026-11-02'").collect()} == \
        {(i, 2.0, ("x",)) for i in range(6)}
    assert tables.history(SPEC, 1)[0].metadata == {"engine": tables.engine, "job": "files", "rows": 6}

    def refused(folder: str) -> dict[str, int]:
        stage(folder)
        raise PlatformError("refusing to commit test/things: a check failed")

    with pytest.raises(PlatformError, match="a check failed"):
        tables.replace_partition_files(SPEC, "2026-11-02", refused, {"job": "files"})
    assert tables.version(SPEC) == 2 and counts(tables.read(SPEC)) == {"2026-11-01": 10, "2026-11-02": 6}
    staging = tmp_path / "lake" / SPEC.name / "_staging"
    assert not staging.exists() or not any(staging.iterdir())


@pytest.mark.reliability(
    "inputs",
    "a partition replacement holding rows of another date",
    "refused, naming the dates; nothing committed")
def test_replace_partition_rejects_rows_of_other_dates(spark, tables: DeltaTables) -> None:
    tables.write(rows(spark, "2026-11-01", range(4)), SPEC)
    version = tables.version(SPEC)
    mixed = rows(spark, "2026-11-01", range(2)).unionByName(rows(spark, "2026-11-03", range(2)))
    with pytest.raises(Exception):
        tables.replace_partition(mixed, SPEC, "2026-11-01")
    assert tables.version(SPEC) == version
    assert counts(tables.read(SPEC)) == {"2026-11-01": 4}


def test_time_travel_and_partition_reads(spark, tables: DeltaTables) -> None:
    tables.write(rows(spark, "2026-11-01", range(4)), SPEC)
    tables.replace_partition(rows(spark, "2026-11-01", range(9)), SPEC, "2026-11-01")
    tables.write(rows(spark, "2026-11-02", range(2)), SPEC)
    assert tables.read(SPEC, version=0).count() == 4
    assert tables.read(SPEC, version=1).count() == 9
    assert tables.read(SPEC, dt="2026-11-02").count() == 2
    assert tables.read(SPEC, dt=["2026-11-01", "2026-11-02"]).count() == 11
    assert tables.read(SPEC, dt="2026-12-31").count() == 0
    with pytest.raises(TableNotFound, match="no version 7"):
        tables.read(SPEC, version=7)
    with pytest.raises(TableNotFound, match="test/snapshot"):
        tables.read(SNAPSHOT)


@pytest.mark.reliability(
    "faults",
    "a write failing before its commit",
    "the table stays at its version; no partial partition is visible")
def test_failed_write_leaves_table_as_it_was(spark, tables: DeltaTables, tmp_path: Path) -> None:
    tables.write(rows(spark, "2026-11-01", range(20)), SPEC)
    before = tables.version(SPEC)

    @F.udf("float")
    def explode_on_13(uid: int) -> float:
        if uid == 13:
            raise ValueError("injected failure")
        return 1.0

    bad = rows(spark, "2026-11-01", range(20)).repartition(4).withColumn("score", explode_on_13("user_id"))
    with pytest.raises(Exception, match="injected failure"):
        tables.replace_partition(bad, SPEC, "2026-11-01")
    assert tables.version(SPEC) == before
    assert tables.read(SPEC).count() == 20
    staging = Path(tables.uri(SPEC).replace("file://", "")) / "_staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_snapshot_overwrite_and_schema_check(spark, tables: DeltaTables) -> None:
    tables.write(spark.createDataFrame([(1, "a"), (2, "b")], "k bigint, v string"), SNAPSHOT, "overwrite")
    tables.write(spark.createDataFrame([(3, "c")], "k bigint, v string"), SNAPSHOT, "overwrite")
    assert [r.k for r in tables.read(SNAPSHOT).collect()] == [3]
    with pytest.raises(SchemaError, match="test/snapshot: column 'k'"):
        tables.write(spark.createDataFrame([("x", "c")], "k string, v string"), SNAPSHOT, "overwrite")
    with pytest.raises(PlatformError, match="not partitioned by dt"):
        tables.replace_partition(spark.createDataFrame([(3, "c")], "k bigint, v string"), SNAPSHOT, "2026-11-01")


def test_files_are_plain_parquet_and_deltalake_reads_the_table(spark, tables: DeltaTables) -> None:
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, QueryBuilder

    tables.write(rows(spark, "2026-11-01", range(6)), SPEC)
    tables.write(rows(spark, "2026-11-02", range(3)), SPEC)
    files = tables.files(SPEC, dt="2026-11-02")
    assert files and all(f.startswith("file://") and "dt=2026-11-02" in f for f in files)
    assert sum(pq.ParquetFile(f[len("file://"):]).metadata.num_rows for f in files) == 3
    local = tables.uri(SPEC).replace("file://", "")
    delta = DeltaTable(local)
    assert [f.name for f in delta.schema().fields] == SPEC.columns
    assert delta.metadata().partition_columns == ["dt"]
    n = QueryBuilder().register("t", delta).execute("select count(*) as n from t").read_all()
    assert n.column("n").to_pylist() == [9]


def test_rs_engine_writes_no_rows_through_the_driver(spark, tmp_path: Path) -> None:
    """The rs engine commits executor-written files: the driver only sees file names."""
    tables = RsDeltaTables(spark, str(tmp_path / "lake"))
    res = tables.write(rows(spark, "2026-11-01", range(50)).repartition(3), SPEC)
    assert res.files == 3 and res.rows == 50
    assert os.path.isdir(str(tmp_path / "lake" / "test" / "things" / "_delta_log"))


def test_replace_several_partitions_in_one_commit(spark, tables: DeltaTables) -> None:
    for day, n in (("2026-11-01", 10), ("2026-11-02", 7), ("2026-11-03", 5)):
        tables.write(rows(spark, day, range(n)), SPEC)
    before = tables.version(SPEC)
    new = rows(spark, "2026-11-01", range(3)).unionByName(rows(spark, "2026-11-02", range(2)))
    res = tables.write(new, SPEC, replace={"dt": ["2026-11-01", "2026-11-02"]})
    assert res.version == before + 1
    assert counts(tables.read(SPEC)) == {"2026-11-01": 3, "2026-11-02": 2, "2026-11-03": 5}
    with pytest.raises(PlatformError, match="not partitioned by job"):
        tables.write(new, SPEC, replace={"job": "x"})


def test_row_group_bytes_bounds_the_row_groups_a_write_makes(spark, tables: DeltaTables) -> None:
    """A spec's row_group_bytes caps the Parquet row groups of its files (Spark's default is 128 MB),
    which bounds what a whole-row-group reader such as Petastorm holds; the training set sets it."""
    import dataclasses

    import pyarrow.parquet as pq

    from core.tables import TRAINING_EXAMPLES

    assert 0 < TRAINING_EXAMPLES.row_group_bytes <= 16 << 20
    bound = 64 << 10
    spec = dataclasses.replace(SPEC, name="test/small_groups", row_group_bytes=bound)
    df = (spark.range(40_000, numPartitions=1)
          .select(F.col("id").alias("user_id"), F.rand(1).cast("float").alias("score"),
                  F.array(F.sha2(F.col("id").cast("string"), 256)).alias("tags"),
                  F.lit(dt.datetime(2026, 11, 1, 12)).alias("ts"), F.lit("2026-11-01").alias("dt")))
    tables.write(df, spec)
    [path] = [f[len("file://"):] for f in tables.files(spec, dt="2026-11-01")]
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    assert meta.num_rows == 40_000 and meta.num_row_groups >= 10, sizes
    assert max(sizes) <= 2 * bound, sizes
    tables.write(df, SPEC)  # no bound: one row group
    [path] = [f[len("file://"):] for f in tables.files(SPEC, dt="2026-11-01")]
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
