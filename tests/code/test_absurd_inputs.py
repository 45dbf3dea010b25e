"""Absurd input values at the feature jobs' entry: timestamps centuries away, one user with 500,000
events in a day, a 10 MB search query."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables as t
from features import encoding as enc
from features.quality import quarantine_spec
from jobs import build_sequences, build_training_set
from tests.conftest import make_config
from tests.helpers import event, item_and_users_lake, put, run, ts

MAX_LEN = 20
OV = (f"sequences.max_len={MAX_LEN}", "sequences.lookback_days=2", "quality.max_quarantine_share=0.9")


@pytest.fixture()
def lake(spark, tmp_path: Path):
    return item_and_users_lake(spark, tmp_path, users=(1, 2))


@pytest.mark.reliability(
    "inputs",
    "timestamps far in the future (9999-12-31) and far in the past (1900, 1970) in the day's partition; "
    "a partition dated 1970",
    "the day's far timestamps quarantined (future_event_time, dt_mismatch) and counted; the 1970 partition "
    "is outside the look-back and never read; the sequence holds the valid events")
def test_timestamps_centuries_away(spark, tmp_path: Path, lake, capsys) -> None:
    tables = lake
    put(spark, tables, t.EVENTS, [
        event(1, 1, "2026-11-02T08:00:00"), event(1, 1, "2026-11-01T09:00:00"),
        {**event(1, 1, "2026-11-02T08:00:00"), "event_time": ts("9999-12-31T23:59:59.999999"), "dt": "2026-11-02"},
        {**event(1, 1, "2026-11-02T08:00:00"), "event_time": ts("1900-01-01T00:00:00"), "dt": "2026-11-02"},
        event(1, 1, "1970-01-01T00:00:00")])
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 0
    out = capsys.readouterr().out
    assert "raw/events: 4 rows, 2 quarantined (dt_mismatch=1, future_event_time=1)" in out
    assert sorted(r.reason for r in tables.read(quarantine_spec(t.EVENTS)).collect()) == [
        "dt_mismatch", "future_event_time"]
    row = tables.read(t.USER_SEQUENCES, dt="2026-11-02").first()
    assert row.user_id == 1 and row.seq_len == 2


@pytest.mark.reliability(
    "inputs",
    "one user with 500,000 events in one day, beside a user whose event carries a 10 MB query",
    "built with bounded memory: the heavy user keeps exactly its latest sequences.max_len events, the other "
    "user is unaffected; input rows = used + quarantined")
def test_a_500k_event_user_and_a_10mb_query(spark, tmp_path: Path, lake, capsys) -> None:
    tables = lake
    n = 500_000
    start = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc).timestamp()
    heavy = spark.range(n, numPartitions=4).select(
        F.lit(1).cast("long").alias("user_id"), (F.col("id") % 1000).alias("item_id"), F.lit("click").alias("behavior"),
        F.lit("recommend").alias("scene"), F.lit(None).cast("string").alias("query"),
        F.timestamp_seconds(F.lit(start) + F.col("id") * 0.15).alias("event_time"),  # one every 150 ms of the day
        F.lit("2026-11-02").alias("dt"))
    huge_query = "shoes " * (10 * 2 ** 20 // 6)
    other = spark.createDataFrame([event(2, 1, "2026-11-02T10:00:00", scene="search", query=huge_query)],
                                  heavy.schema)
    tables.write(heavy.unionByName(other), t.EVENTS, "overwrite")
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 0
    assert f"raw/events: {n + 1:,} rows, none quarantined" in capsys.readouterr().out
    rows = {r.user_id: r for r in tables.read(t.USER_SEQUENCES, dt="2026-11-02").collect()}
    assert sorted(rows) == [1, 2]
    assert rows[1].seq_len == MAX_LEN and rows[2].seq_len == 1
    buckets = make_config(tmp_path, *OV).sequences.hash_buckets.item_id
    latest = spark.range(n - MAX_LEN, n).select(enc.hashed(F.col("id") % 1000, "item_id", buckets).alias("i"))
    assert sorted(rows[1].seq_item[:MAX_LEN]) == sorted(r.i for r in latest.collect())  # the last 20 of the day


@pytest.mark.reliability(
    "inputs",
    "a search impression list whose query is 10 MB",
    "the training set is built; the query becomes its first training_set query tokens, like any query")
def test_a_10mb_query_in_the_training_set(spark, tmp_path: Path, lake) -> None:
    tables = lake
    days = ["2026-11-02", "2026-11-03", "2026-11-04"]
    huge_query = "red shoes " * (10 * 2 ** 20 // 10)
    put(spark, tables, t.EVENTS, [event(2, 1, f"{d}T08:00:00") for d in days])
    imp = {"user_id": 2, "item_id": 1, "scene": "search", "query": huge_query, "rank_features": [0.5] * 8,
           "clicked": 1, "carted": 0, "bought": 0}
    put(spark, tables, t.IMPRESSIONS, [
        {**imp, "item_id": item, "clicked": int(item == 1), "event_time": ts(f"{d}T09:00:00"), "dt": d}
        for d in days for item in (1, 2, 3)])
    assert run(build_training_set, tmp_path, "--start", days[0], "--end", days[-1],
               overrides=(*OV, "training.tasks=[ctr,l2r]")) == 0
    ex = tables.read(t.TRAINING_EXAMPLES).collect()
    assert {r.dt for r in ex} == set(days)
    tokens = {tuple(r.query_tokens) for r in ex}
    assert len(tokens) == 1
    (first,) = tokens
    assert first[0] != 0 and first[1] != 0 and first[0] != first[1]   # "red", "shoes"
