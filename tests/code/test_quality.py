"""Input validation: contract schema errors, every quarantine reason, the bound, no half-written tables."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.errors import SchemaError
from features.quality import quarantine_spec, validated
from jobs import build_sequences
from tests.helpers import event, frame, item_and_users_lake, put, run, ts

OV = ("sequences.max_len=5", "sequences.lookback_days=2", "quality.max_quarantine_share=0.9")


@pytest.fixture()
def lake(spark, tmp_path: Path):
    return item_and_users_lake(spark, tmp_path)


def bad_events() -> list[dict]:
    good = event(1, 1, "2026-11-02T08:00:00")
    return [
        good, dict(good),                                                   # duplicate (one copy stays)
        event(1, 1, "2026-11-02T09:00:00"), event(1, 1, "2026-11-02T10:00:00"),
        {**event(1, 1, "2026-11-02T08:00:01"), "user_id": None},           # null_id
        {**event(1, 1, "2026-11-02T08:00:02"), "item_id": None},           # null_id
        event(1, 1, "2026-11-02T08:00:03", behavior="view"),               # unknown_behavior
        {**event(1, 1, "2026-11-02T08:00:04"), "event_time": None},        # null_event_time
        {**event(1, 1, "2026-11-03T00:00:00"), "dt": "2026-11-02"},         # future_event_time
        {**event(1, 1, "2026-11-01T23:00:00"), "dt": "2026-11-02"},         # dt_mismatch
    ]


@pytest.mark.reliability(
    "inputs",
    "null ids and timestamps, an unknown behaviour, a dt that does not match the time, an event in "
    "the future, duplicate rows",
    "each row quarantined with its reason and counted; input rows = kept + quarantined; a re-run "
    "replaces the quarantine")
def test_each_reason_is_quarantined_and_counted(spark, tmp_path: Path, lake, capsys) -> None:
    tables = lake
    put(spark, tables, t.EVENTS, bad_events())
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 0
    out = capsys.readouterr().out
    assert ("raw/events: 10 rows, 7 quarantined (dt_mismatch=1, duplicate=1, future_event_time=1, "
            "null_event_time=1, null_id=2, unknown_behavior=1)") in out
    q = tables.read(quarantine_spec(t.EVENTS), dt="2026-11-02")
    reasons = sorted(r.reason for r in q.collect())
    assert reasons == ["dt_mismatch", "duplicate", "future_event_time", "null_event_time", "null_id", "null_id",
                       "unknown_behavior"]
    assert {r.job for r in q.collect()} == {"build_sequences"}
    assert q.where(F.col("reason") == "unknown_behavior").first().row_json.count('"behavior":"view"') == 1
    row = tables.read(t.USER_SEQUENCES).first()
    assert row.seq_len == 3                                              # 3 distinct valid events
    # a re-run replaces the quarantine partition instead of adding to it
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 0
    assert tables.read(quarantine_spec(t.EVENTS), dt="2026-11-02").count() == 7


@pytest.mark.reliability(
    "inputs",
    "more bad rows than quality.max_quarantine_share",
    "fails before any output, one line naming the share and the key; the quarantine is kept for "
    "inspection")
def test_share_above_the_bound_fails_before_any_output(spark, tmp_path: Path, lake, capsys) -> None:
    tables = lake
    put(spark, tables, t.EVENTS, bad_events())
    assert run(build_sequences, tmp_path, "--date", "2026-11-02",
               overrides=("sequences.lookback_days=2", "quality.max_quarantine_share=0.5")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("build_sequences failed: too many rows quarantined: raw/events 70.00% > 50.00%")
    assert not tables.exists(t.USER_SEQUENCES)
    assert tables.read(quarantine_spec(t.EVENTS)).count() == 7          # kept for inspection


@pytest.mark.reliability(
    "inputs",
    "raw/items with a negative, NaN or infinite price, a null id, two disagreeing rows of one item, exact "
    "copies; an event whose item is missing from raw/items",
    "bad item rows quarantined with their reason and counted (input rows = kept + quarantined); their events "
    "and the missing item's get unknown attributes and log price 0: every sequence value finite")
def test_bad_item_rows_are_quarantined_and_their_events_kept(spark, tmp_path: Path, lake, capsys) -> None:
    import math

    tables = lake
    put(spark, tables, t.ITEMS, [
        {"item_id": 1, "price": 2.0, "category_id": 5},
        {"item_id": 2, "price": -3.0}, {"item_id": 3, "price": float("nan")}, {"item_id": 4, "price": float("inf")},
        {"item_id": None, "price": 1.0},
        {"item_id": 5, "price": 1.0, "category_id": 1}, {"item_id": 5, "price": 1.0, "category_id": 2},
        {"item_id": 6, "price": None}, {"item_id": 6, "price": None}])
    put(spark, tables, t.EVENTS, [event(1, i, f"2026-11-02T0{i}:00:00") for i in range(1, 8)])  # item 7: missing
    assert run(build_sequences, tmp_path, "--date", "2026-11-02",
               overrides=("sequences.max_len=10", "sequences.lookback_days=2", "quality.max_quarantine_share=0.9")) == 0
    out = capsys.readouterr().out
    assert "raw/items: 9 rows, 7 quarantined (bad_price=3, conflicting_rows=2, duplicate=1, null_id=1)" in out
    q = tables.read(quarantine_spec(t.ITEMS), dt="2026-11-02").collect()
    assert sorted(r.reason for r in q) == ["bad_price"] * 3 + ["conflicting_rows"] * 2 + ["duplicate", "null_id"]
    row = tables.read(t.USER_SEQUENCES).first()
    assert row.seq_len == 7                                              # no event lost, none duplicated
    prices = row.seq_log_price[:7]
    assert all(math.isfinite(v) for v in [*prices, *row.user_dense])
    assert sorted(prices) == pytest.approx([0.0] * 6 + [math.log1p(2.0)])
    assert sorted(row.seq_category[:7])[-1] != sorted(row.seq_category[:7])[0]   # item 1's category is known


@pytest.mark.reliability(
    "inputs",
    "null ids, labels outside their values, a purchase without a click, tiers outside 1..7, labels dated after "
    "the run's date, rank_features of the wrong length or NaN, in raw/impressions, raw/follows, raw/ppp_labels "
    "and raw/shop_prefs",
    "each row quarantined with its reason and counted; input rows = kept + quarantined")
def test_other_tables_reasons(spark) -> None:
    day = dt.date(2026, 11, 2)
    good = {"user_id": 1, "item_id": 1, "scene": "search", "query": "q", "event_time": ts("2026-11-02T08:00:00"),
            "rank_features": [0.5] * 8, "clicked": 1, "carted": 0, "bought": 1, "dt": "2026-11-02"}
    imp = frame(spark, t.IMPRESSIONS, [
        good, {**good, "item_id": 2, "clicked": 0},                         # bought without click
        {**good, "item_id": 3, "carted": 2},                                # not binary
        {**good, "item_id": 4, "rank_features": [0.5] * 7},                 # wrong length
        {**good, "item_id": 5, "rank_features": [float("nan")] * 8},        # NaN
    ])
    v = validated(imp, t.IMPRESSIONS, day, rank_dim=8)
    assert v.counts == {"bad_label": 2, "bad_rank_features": 2} and v.total == 5 and v.valid.count() == 1
    ppp = frame(spark, t.PPP_LABELS, [{"user_id": 1, "tier": 0, "dt": "2026-11-02"},
                                      {"user_id": 1, "tier": 8, "dt": "2026-11-02"},
                                      {"user_id": 1, "tier": 3, "dt": "2026-11-03"},
                                      {"user_id": 2, "tier": 7, "dt": "2026-11-02"}])
    v = validated(ppp, t.PPP_LABELS, day)
    assert v.counts == {"bad_label": 2, "future_label": 1}
    fol = frame(spark, t.FOLLOWS, [{"user_id": 1, "talent_id": None, "event_time": ts("2026-11-02T01:00:00"),
                                    "followed": 1, "dt": "2026-11-02"},
                                   {"user_id": 1, "talent_id": 3, "event_time": ts("2026-11-02T01:00:00"),
                                    "followed": 5, "dt": "2026-11-02"}])
    assert validated(fol, t.FOLLOWS, day).counts == {"null_id": 1, "bad_label": 1}
    shop = frame(spark, t.SHOP_PREFS, [{"user_id": 1, "shop_id": 3, "event_time": ts("2026-11-02T01:00:00"),
                                        "label": -1, "dt": "2026-11-02"}])
    assert validated(shop, t.SHOP_PREFS, day).counts == {"bad_label": 1}


INPUT_TABLES = [t.EVENTS, t.ITEMS, t.USERS, t.IMPRESSIONS, t.FOLLOWS, t.PPP_LABELS, t.SHOP_PREFS]


@pytest.mark.reliability(
    "inputs",
    "a missing column and a column of the wrong type, in each input table of CONTRACT.md",
    "one line naming the table, the column, the types and the fix, before any row is read")
@pytest.mark.parametrize("spec", INPUT_TABLES, ids=[s.name for s in INPUT_TABLES])
def test_every_input_table_names_a_missing_or_mistyped_column(spark, spec) -> None:  # noqa: ANN001
    empty = spark.createDataFrame([], spec.schema)
    key = spec.schema.fields[0].name
    with pytest.raises(SchemaError, match=f"^table {spec.name}: missing column '{key}' .*; fix the writer of "):
        validated(empty.drop(key), spec, dt.date(2026, 11, 2))
    with pytest.raises(SchemaError, match=f"^table {spec.name}: column '{key}' has type string, expected bigint; "
                                          f"cast it in the writer of {spec.name}$"):
        validated(empty.withColumn(key, F.col(key).cast("string")), spec, dt.date(2026, 11, 2))


@pytest.mark.reliability(
    "inputs",
    "a missing column, a column of the wrong type in raw/events",
    "one line naming the table, the column, the types and the fix; nothing written")
def test_schema_errors_name_table_column_and_types(spark, tmp_path: Path, lake, capsys) -> None:
    tables = lake
    df = frame(spark, t.EVENTS, [event(1, 1, "2026-11-02T08:00:00")])
    df = df.withColumn("item_id", F.col("item_id").cast("string"))
    with pytest.raises(SchemaError, match="table raw/events: column 'item_id' has type string, expected bigint"):
        validated(df, t.EVENTS, dt.date(2026, 11, 2))
    with pytest.raises(SchemaError, match="table raw/events: missing column 'scene'"):
        validated(frame(spark, t.EVENTS, [event(1, 1, "2026-11-02T08:00:00")]).drop("scene"), t.EVENTS,
                  dt.date(2026, 11, 2))
    # through the job: an upstream table written with a wrong type
    from core.tables import TableSpec

    wrong = TableSpec(t.EVENTS.name, df.schema, ("dt",))
    tables.write(df, wrong, "overwrite")
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("build_sequences failed: table raw/events: column 'item_id' has type string, expected bigint; "
                   "cast it in the writer of raw/events")


@pytest.mark.reliability(
    "faults",
    "a job failing midway (an error inside the Spark write)",
    "no table changes: the output and the quarantine stay at their versions")
def test_a_run_failing_midway_changes_no_table(spark, tmp_path: Path, lake, monkeypatch) -> None:
    tables = lake
    put(spark, tables, t.EVENTS, bad_events())
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 0
    before = (tables.version(t.USER_SEQUENCES), tables.version(quarantine_spec(t.EVENTS)))
    from features import pipeline

    real = pipeline.serving_from_rows

    @F.udf("int")
    def boom(x: int) -> int:
        raise RuntimeError("disk full (injected)")

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return real(*args, **kwargs).withColumn("seq_len", boom("seq_len"))

    monkeypatch.setattr(pipeline, "serving_from_rows", failing)
    put(spark, tables, t.EVENTS, bad_events()[:3])
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=OV) == 1
    assert (tables.version(t.USER_SEQUENCES), tables.version(quarantine_spec(t.EVENTS))) == before
    assert tables.read(quarantine_spec(t.EVENTS)).count() == 7


@pytest.mark.reliability(
    "inputs", "raw/impressions whose rank_features hold 3 values while the config expects 8",
    "quarantined as bad_rank_features with counts; above the bound, the failure line names "
    "inputs.rank_features_dim and its value")
def test_rank_features_of_another_length_name_the_config_key(spark, tmp_path: Path, lake) -> None:
    from core.errors import DataQualityError
    from features.quality import enforce_bound

    rows = [{"user_id": u, "item_id": 1, "scene": "search", "query": "q", "event_time": ts("2026-11-02T08:00:00"),
             "rank_features": [0.1, 0.2, 0.3], "clicked": 0, "carted": 0, "bought": 0, "dt": "2026-11-02"}
            for u in range(4)]
    result = validated(frame(spark, t.IMPRESSIONS, rows), t.IMPRESSIONS, dt.date(2026, 11, 2), rank_dim=8)
    assert result.counts == {"bad_rank_features": 4} and result.total == 4
    with pytest.raises(DataQualityError) as exc:
        enforce_bound(lake, [result], dt.date(2026, 11, 2), "test", "run1", max_share=0.1)
    message = str(exc.value)
    assert "inputs.rank_features_dim=8" in message and "\n" not in message
