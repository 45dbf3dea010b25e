"""build_sequences and the sequence selections: window edges, point in time, order, encoding."""
from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import get_tables
from features import encoding as enc
from features.sequences import (encode_behaviour, encode_items, encode_users, latest_n_before,
                                serving_sequences, assemble)
from jobs import build_sequences
from tests.conftest import make_config
from tests.helpers import event, frame, put, run, ts

ITEMS = [
    {"item_id": 1, "shop_id": 10, "brand_id": 100, "category_id": 7, "tags": ["price:low", "style:s1"], "price": 9.0},
    {"item_id": 2, "shop_id": 11, "brand_id": None, "category_id": 8, "tags": None, "price": 99.0},
    {"item_id": 3, "shop_id": None, "brand_id": 101, "category_id": None, "tags": ["a", "b", "c", "d", "e"],
     "price": None},
]
USERS = [{"user_id": 1, "age_level": 3, "gender": "F", "city_level": 2}, {"user_id": 2}]


@pytest.fixture()
def lake(spark, tmp_path: Path):
    cfg = make_config(tmp_path, "sequences.max_len=3", "sequences.lookback_days=2")
    tables = get_tables(spark, cfg)
    put(spark, tables, t.ITEMS, ITEMS)
    put(spark, tables, t.USERS, USERS)
    return cfg, tables


def seq_of(tables, user: int, day: str):  # noqa: ANN201
    return tables.read(t.USER_SEQUENCES, dt=day).where(F.col("user_id") == user).first()


def test_window_edges_order_and_truncation(spark, tmp_path: Path, lake) -> None:
    cfg, tables = lake
    put(spark, tables, t.EVENTS, [
        event(1, 1, "2026-11-01T00:00:00"),            # first instant of the 2-day window: in
        event(1, 2, "2026-10-31T23:59:59.999999"),     # just before the window: out
        event(1, 3, "2026-11-02T23:59:59.999999", "buy"),  # last instant of the day: in
        event(1, 2, "2026-11-02T10:00:00", "cart"),
        event(1, 1, "2026-11-02T09:00:00", "fav"),
        event(2, 1, "2026-10-31T12:00:00"),            # only outside the window: not served
    ])
    assert run(build_sequences, tmp_path, "--date", "2026-11-02",
               overrides=("sequences.max_len=3", "sequences.lookback_days=2")) == 0
    out = tables.read(t.USER_SEQUENCES, dt="2026-11-02")
    assert [r.user_id for r in out.collect()] == [1]
    row = seq_of(tables, 1, "2026-11-02")
    # 4 events in the window, truncated to the latest 3, ordered oldest -> newest
    assert row.seq_len == 3
    b = enc.BEHAVIOR_INDEX
    assert row.seq_behavior == [b["fav"], b["cart"], b["buy"]]
    assert row.seq_scene == [enc.SCENE_INDEX["recommend"]] * 3
    # age buckets relative to the end of the day (2026-11-03 00:00): 15h -> <=1 day, 14h, 1us -> <=1 min
    assert row.seq_time_bucket == [5, 5, 1]
    assert row.snapshot_time == ts("2026-11-03T00:00:00")
    assert len(row.seq_item) == 3 and len(row.seq_tags) == 3 * cfg.sequences.max_tags
    # with room for 5, the first instant of the window is in and the instant before it is out
    assert run(build_sequences, tmp_path, "--date", "2026-11-02",
               overrides=("sequences.max_len=5", "sequences.lookback_days=2")) == 0
    row = seq_of(tables, 1, "2026-11-02")
    assert row.seq_len == 4
    assert row.seq_time_bucket[0] == 6                          # 2 days old: <= 3 days
    assert row.seq_behavior[0] == b["click"] and row.seq_behavior[4] == enc.PAD


def test_padding_unknowns_and_profile(spark, tmp_path: Path, lake) -> None:
    cfg, tables = lake
    put(spark, tables, t.EVENTS, [event(1, 3, "2026-11-02T08:00:00", scene=None),
                                  event(2, 99, "2026-11-02T09:00:00", scene="weird")])
    assert run(build_sequences, tmp_path, "--date", "2026-11-02",
               overrides=("sequences.max_len=3", "sequences.lookback_days=2")) == 0
    u1 = seq_of(tables, 1, "2026-11-02")
    assert u1.seq_len == 1
    assert u1.seq_item[1:] == [enc.PAD, enc.PAD] and u1.seq_behavior[1:] == [0, 0]
    assert u1.seq_scene[0] == enc.UNKNOWN                       # null scene
    assert u1.seq_shop[0] == enc.UNKNOWN and u1.seq_category[0] == enc.UNKNOWN  # null attributes
    assert u1.seq_brand[0] >= 2
    tags = u1.seq_tags[:cfg.sequences.max_tags]
    assert all(x >= 2 for x in tags)                            # 5 tags truncated to max_tags
    assert u1.seq_log_price == [0.0, 0.0, 0.0]                  # null price
    assert (u1.user_age, u1.user_gender, u1.user_city) == (2 + 3, enc.GENDER_INDEX["F"], 2 + 2)
    u2 = seq_of(tables, 2, "2026-11-02")
    assert u2.seq_scene[0] == enc.UNKNOWN                       # value outside the vocabulary
    assert u2.seq_shop[0] == enc.UNKNOWN and u2.seq_tags[:4] == [0, 0, 0, 0]  # item missing from raw/items
    assert u2.seq_item[0] >= 2                                  # its id is still encoded
    assert (u2.user_age, u2.user_gender, u2.user_city) == (enc.UNKNOWN,) * 3
    assert u2.user_dense[0] == pytest.approx(0.6931, abs=1e-3)  # log1p(1)


def test_encoding_is_stable_across_days_with_new_ids(spark, tmp_path: Path, lake) -> None:
    cfg, tables = lake
    put(spark, tables, t.EVENTS, [event(1, 1, "2026-11-01T08:00:00"), event(1, 1, "2026-11-02T08:00:00"),
                                  event(1, 2, "2026-11-02T09:00:00")])
    ov = ("sequences.max_len=3", "sequences.lookback_days=2")
    assert run(build_sequences, tmp_path, "--date", "2026-11-01", overrides=ov) == 0
    put(spark, tables, t.ITEMS, ITEMS + [{"item_id": 4, "shop_id": 10, "category_id": 7, "price": 1.0}])
    tables.write(frame(spark, t.EVENTS, [event(1, 4, "2026-11-02T10:00:00")]), t.EVENTS)
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=ov) == 0
    d1, d2 = seq_of(tables, 1, "2026-11-01"), seq_of(tables, 1, "2026-11-02")
    assert d1.seq_item[0] == d2.seq_item[0]                      # item 1 on both days
    assert d1.seq_shop[0] == d2.seq_shop[2]                      # shop 10 of items 1 and the new item 4
    assert len({d2.seq_item[0], d2.seq_item[1], d2.seq_item[2]}) == 3
    ref = spark.range(1).select(enc.hashed(F.lit(1).cast("bigint"), "item_id", cfg.sequences.hash_buckets.item_id)
                                .alias("h")).first().h
    assert d1.seq_item[0] == ref                                 # a pure function of the raw id


def test_point_in_time_excludes_the_instant_itself(spark) -> None:
    beh = encode_behaviour(frame(spark, t.EVENTS, [
        event(1, 1, "2026-11-02T10:00:00"),                     # exactly at the anchor: excluded
        event(1, 2, "2026-11-02T09:59:59.999999"),              # 1 microsecond earlier: included
        event(1, 3, "2026-11-02T09:00:00"),
        event(1, 4, "2026-11-02T11:00:00"),                      # later: excluded
        event(1, 5, "2026-10-01T11:00:00"),                      # older than the look-back: excluded
        event(2, 6, "2026-11-02T08:00:00"),                      # other user
    ]))
    anchors = spark.createDataFrame([(7, 1, ts("2026-11-02T10:00:00")), (8, 1, ts("2026-11-02T09:00:00")),
                                     (9, 3, ts("2026-11-02T09:00:00"))],
                                    "example_id bigint, user_id bigint, anchor_time timestamp")
    rows = latest_n_before(beh, anchors, "example_id", 5, 30).collect()
    got = {}
    for r in rows:
        got.setdefault(r.example_id, set()).add(r.item_id)
    assert got == {7: {2, 3}}   # example 8: nothing strictly before 09:00; example 9: user without events


def test_point_in_time_truncates_to_the_latest_n_across_blocks(spark) -> None:
    evs = [event(1, i, f"2026-11-02T{10 + i // 60:02d}:{i % 60:02d}:00") for i in range(1, 26)]
    beh = encode_behaviour(frame(spark, t.EVENTS, evs))
    anchors = spark.createDataFrame([(1, 1, ts("2026-11-02T10:13:00")), (2, 1, ts("2026-11-02T10:25:30")),
                                     (3, 1, ts("2026-11-02T10:04:00"))],
                                    "example_id bigint, user_id bigint, anchor_time timestamp")
    rows = latest_n_before(beh, anchors, "example_id", 4, 30).collect()
    got: dict[int, list[int]] = {}
    for r in sorted(rows, key=lambda r: r.event_time):
        got.setdefault(r.example_id, []).append(r.item_id)
    assert got == {1: [9, 10, 11, 12], 2: [22, 23, 24, 25], 3: [1, 2, 3]}


def test_serving_and_point_in_time_paths_build_identical_sequences(spark, lake) -> None:
    cfg, _ = lake
    import datetime as dt

    evs = [event(u, (u * 7 + i) % 3 + 1, f"2026-11-02T{(i * 5) % 24:02d}:{i % 60:02d}:00",
                 ["click", "cart", "fav", "buy"][i % 4]) for u in (1, 2) for i in range(9)]
    evs.append(event(1, 2, "2026-11-02T00:00:00"))
    raw = frame(spark, t.EVENTS, evs)
    beh = encode_behaviour(raw)
    items = encode_items(frame(spark, t.ITEMS, ITEMS), cfg.sequences)
    users = encode_users(frame(spark, t.USERS, USERS))
    serving = serving_sequences(beh, items, users, dt.date(2026, 11, 2), cfg.sequences).drop("dt")
    anchors = spark.createDataFrame([(1, 1, ts("2026-11-03T00:00:00")), (2, 2, ts("2026-11-03T00:00:00"))],
                                    "example_id bigint, user_id bigint, anchor_time timestamp")
    rows = latest_n_before(beh, anchors, "example_id", cfg.sequences.max_len, cfg.sequences.lookback_days)
    pit = assemble(rows, ["example_id"], items, users, cfg.sequences, anchors=anchors).drop("example_id")
    cols = [c for c in serving.columns if c != "snapshot_time"]
    a = sorted(serving.select(cols).collect())
    b = sorted(pit.select(cols).collect())
    assert a == b and len(a) == 2


@pytest.mark.reliability(
    "idempotency",
    "build_sequences re-run for the same date",
    "the partition is replaced (one new version, same rows), not appended")
def test_rerun_replaces_the_partition(spark, tmp_path: Path, lake) -> None:
    _, tables = lake
    put(spark, tables, t.EVENTS, [event(u, 1, "2026-11-02T08:00:00") for u in (1, 2, 3)])
    ov = ("sequences.max_len=3", "sequences.lookback_days=2")
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=ov) == 0
    v = tables.version(t.USER_SEQUENCES)
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=ov) == 0
    assert tables.version(t.USER_SEQUENCES) == v + 1
    assert tables.read(t.USER_SEQUENCES).count() == 3
    meta = tables.last_metadata(t.USER_SEQUENCES)
    assert meta["job"] == "build_sequences" and "raw/events" in meta["inputs"]


@pytest.mark.reliability(
    "inputs",
    "no raw/events partition in the look-back window",
    "one line naming the table, the dates and the fix")
def test_missing_events_partition_is_a_clear_error(spark, tmp_path: Path, lake, capsys) -> None:
    _, tables = lake
    put(spark, tables, t.EVENTS, [event(1, 1, "2026-11-02T08:00:00")])
    assert run(build_sequences, tmp_path, "--date", "2026-12-20",
               overrides=("sequences.lookback_days=2",)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("build_sequences failed: table raw/events has no partition in 2026-12-19..2026-12-20")


def _commit_empty_partition(spark, tables, day: str, tmp_path: Path) -> None:
    """An upstream load that committed a 0-row file into ``dt=day`` (what an empty or failed load leaves)."""
    import shutil

    import pyarrow.parquet as pq
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction

    out = tmp_path / "empty_load"
    frame(spark, t.EVENTS, []).drop("dt").coalesce(1).write.parquet(str(out))
    src = next(out.glob("*.parquet"))
    assert pq.read_metadata(src).num_rows == 0
    rel = f"dt={day}/part-empty.parquet"
    dest = Path(tables.uri(t.EVENTS)) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    st = dest.stat()
    DeltaTable(tables.uri(t.EVENTS)).create_write_transaction(
        [AddAction(rel, st.st_size, {"dt": day}, int(st.st_mtime * 1000), True, '{"numRecords": 0}')],
        mode="append", schema=DeltaTable(tables.uri(t.EVENTS)).schema(), partition_by=["dt"])
    assert day in tables.partitions(t.EVENTS)


@pytest.mark.reliability(
    "inputs",
    "an empty dt partition (an empty or failed upstream load) as the whole look-back window",
    "refused in one line naming the table and window; the published partition is kept; --allow-empty"
    " overrides")
def test_an_empty_window_is_refused_and_keeps_the_partition(spark, tmp_path: Path, lake, capsys) -> None:
    _, tables = lake
    put(spark, tables, t.EVENTS, [event(u, 1, "2026-11-02T08:00:00") for u in (1, 2)])
    ov = ("sequences.max_len=3", "sequences.lookback_days=1")
    # a good partition of 11-03 first (its window, 11-03 only, is then loaded empty)
    _commit_empty_partition(spark, tables, "2026-11-03", tmp_path)
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=ov) == 0
    version = tables.version(t.USER_SEQUENCES)
    assert run(build_sequences, tmp_path, "--date", "2026-11-03", overrides=ov) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("build_sequences failed: raw/events has no valid rows in 2026-11-03..2026-11-03")
    assert "--allow-empty" in err
    assert tables.version(t.USER_SEQUENCES) == version  # nothing committed
    assert run(build_sequences, tmp_path, "--date", "2026-11-03", "--allow-empty", overrides=ov) == 0
    assert tables.read(t.USER_SEQUENCES, dt="2026-11-03").count() == 0


@pytest.mark.reliability(
    "inputs",
    "a date with no events of its own",
    "the sequences are built from earlier days, with a warning line naming the date")
def test_a_date_without_its_own_events_warns(spark, tmp_path: Path, lake, capsys) -> None:
    _, tables = lake
    put(spark, tables, t.EVENTS, [event(u, 1, "2026-11-02T08:00:00") for u in (1, 2)])
    _commit_empty_partition(spark, tables, "2026-11-03", tmp_path)
    assert run(build_sequences, tmp_path, "--date", "2026-11-03", overrides=("sequences.lookback_days=2",)) == 0
    out = capsys.readouterr().out
    assert "warning: raw/events has no rows of 2026-11-03 itself" in out
    assert tables.read(t.USER_SEQUENCES, dt="2026-11-03").count() == 2
