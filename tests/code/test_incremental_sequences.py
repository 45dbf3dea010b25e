"""build_sequences' incremental path: the state of D-1 advanced by the events of D equals a full
rebuild of D's window row for row; the fallbacks to a full rebuild."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import get_tables
from features.quality import release, validated
from features.sequences import encode_behaviour, encode_items, encode_users, serving_sequences
from jobs import build_sequences
from tests.conftest import make_config
from tests.helpers import event, frame, put, run

# (the quarantined rows below are a large share of their day's few rows)
OV = ("sequences.max_len=3", "sequences.lookback_days=3", "quality.max_quarantine_share=0.6")
DAYS = [f"2026-11-0{d}" for d in range(1, 8)]
ITEMS = [{"item_id": 1, "shop_id": 10, "brand_id": 100, "category_id": 7, "tags": ["price:low"], "price": 9.0},
         {"item_id": 2, "shop_id": 11, "category_id": 8, "price": 99.0},
         {"item_id": 3, "brand_id": 101, "tags": ["a", "b", "c", "d", "e"]}]
USERS = [{"user_id": 1, "age_level": 3, "gender": "F", "city_level": 2}, {"user_id": 3, "gender": "M"}]

# 3-day window, at most 3 behaviours per user; no event at all on 11-04 (no partition)
EVENTS = [
    # user 1: active most days, with ties in event_time (broken by item, behaviour, scene)
    event(1, 1, "2026-11-01T00:00:00"), event(1, 2, "2026-11-01T23:59:59.999999"),
    event(1, 3, "2026-11-02T10:00:00"), event(1, 1, "2026-11-02T10:00:00"),
    event(1, 1, "2026-11-02T10:00:00", "buy"), event(1, 1, "2026-11-02T10:00:00", "buy", "search"),
    event(1, 2, "2026-11-03T08:00:00", "cart"), event(1, 9, "2026-11-05T08:00:00", "fav", None),
    event(1, 2, "2026-11-07T00:00:00"),
    # user 2: two days, then inactive: leaves the window (and the table) from 11-05
    event(2, 1, "2026-11-01T12:00:00"), event(2, 2, "2026-11-02T12:00:00", "buy"),
    # user 3: more than max_len events in one day, then a tie with an older kept behaviour
    *[event(3, i % 3 + 1, f"2026-11-03T{h:02d}:00:00", ["click", "cart", "fav", "buy"][i % 4])
      for i, h in enumerate(range(1, 8))],
    event(3, 1, "2026-11-03T07:00:00", "click", "promo"), event(3, 3, "2026-11-06T05:00:00"),
    # user 4: new on 11-05, with an item missing from raw/items and two rows differing only in query
    event(4, 99, "2026-11-05T09:00:00", scene="weird"), event(4, 2, "2026-11-05T09:30:00", query="a"),
    event(4, 2, "2026-11-05T09:30:00", query="b"),
    # an exact duplicate (quarantined) and a row of the future relative to its dt (quarantined)
    event(5, 1, "2026-11-06T01:00:00"), event(5, 1, "2026-11-06T01:00:00"),
    event(5, 2, "2026-11-07T01:00:00", day="2026-11-06"),
]


@pytest.fixture()
def lake(spark, tmp_path: Path):  # noqa: ANN201
    cfg = make_config(tmp_path, *OV)
    tables = get_tables(spark, cfg)
    put(spark, tables, t.ITEMS, ITEMS)
    put(spark, tables, t.USERS, USERS)
    put(spark, tables, t.EVENTS, EVENTS)
    return cfg, tables


def reference(spark, tables, cfg, day: str) -> list[dict]:  # noqa: ANN001
    """The sequences of ``day`` computed from scratch: the whole window's validated events."""
    d = dt.date.fromisoformat(day)
    checked = validated(tables.read(t.EVENTS), t.EVENTS, d)
    try:
        seq = serving_sequences(encode_behaviour(checked.valid), encode_items(tables.read(t.ITEMS), cfg.sequences),
                                encode_users(tables.read(t.USERS)), d, cfg.sequences)
        return rows_of(seq)
    finally:
        release(checked)


def rows_of(df) -> list[dict]:  # noqa: ANN001
    return [r.asDict(recursive=True) for r in sorted(df.select(t.USER_SEQUENCES.columns).collect())]


def published(tables, day: str) -> list[dict]:  # noqa: ANN001
    return rows_of(tables.read(t.USER_SEQUENCES, dt=day))


def mode(tables, spec: t.TableSpec = t.USER_SEQUENCES) -> str:  # noqa: ANN001
    return str(tables.last_metadata(spec)["mode"])


def test_incremental_equals_a_full_rebuild_row_for_row(spark, tmp_path: Path, lake) -> None:
    cfg, tables = lake
    for i, day in enumerate(DAYS):
        assert run(build_sequences, tmp_path, "--date", day, overrides=OV) == 0
        assert mode(tables) == ("full" if i == 0 else "incremental")
        assert published(tables, day) == reference(spark, tables, cfg, day), day
    users = {d: [r["user_id"] for r in published(tables, d)] for d in DAYS}
    assert users["2026-11-04"] == [1, 2, 3] and users["2026-11-05"] == [1, 3, 4]   # user 2 left the window
    assert users["2026-11-07"] == [1, 3, 4, 5]
    u3 = next(r for r in published(tables, "2026-11-03") if r["user_id"] == 3)
    assert u3["seq_len"] == 3                                  # 8 events that day, the latest 3 kept
    state = tables.read(t.USER_SEQUENCE_STATE, dt="2026-11-02").where(F.col("user_id") == 1).first()
    # the tie at 10:00 broken by (item, behaviour, scene): the three latest, oldest first
    # (click 2, buy 5; search 2, recommend 3): the click of item 1 at 10:00 is the one cut
    assert [(e.item_id, e.behavior, e.scene) for e in state.events] == [(1, 5, 2), (1, 5, 3), (3, 2, 3)]


def test_a_wrong_state_gives_another_result(spark, tmp_path: Path, lake) -> None:
    """The comparison above can fail: a state missing one user's oldest behaviour (its commit metadata
    kept, so it is used) changes the next day's sequences."""
    cfg, tables = lake
    for day in DAYS[:3]:
        assert run(build_sequences, tmp_path, "--date", day, overrides=OV) == 0
    meta = tables.last_metadata(t.USER_SEQUENCE_STATE)
    good = tables.read(t.USER_SEQUENCE_STATE, dt=DAYS[2])
    bad = good.withColumn("events", F.when(F.col("user_id") == 1, F.slice("events", 2, 3)).otherwise(F.col("events")))
    tables.replace_partition(bad, t.USER_SEQUENCE_STATE, DAYS[2], metadata=meta)
    assert run(build_sequences, tmp_path, "--date", DAYS[3], overrides=OV) == 0
    assert mode(tables) == "incremental"
    got, want = published(tables, DAYS[3]), reference(spark, tables, cfg, DAYS[3])
    assert [r["user_id"] for r in got] == [r["user_id"] for r in want]
    assert [r for r in got if r["user_id"] == 1] != [r for r in want if r["user_id"] == 1]
    assert [r for r in got if r["user_id"] != 1] == [r for r in want if r["user_id"] != 1]


def test_fallbacks_to_a_full_rebuild(spark, tmp_path: Path, lake, capsys) -> None:
    cfg, tables = lake

    def build(day: str, *args: str, ov: tuple[str, ...] = OV) -> str:
        capsys.readouterr()
        assert run(build_sequences, tmp_path, "--date", day, *args, overrides=ov) == 0
        return capsys.readouterr().out

    out = build(DAYS[1])                                        # no state of 11-01
    assert "full rebuild from 2026-10-31..2026-11-02: no state of 2026-11-01" in out and mode(tables) == "full"
    assert "wrote features/user_sequence_state" in out
    assert "incremental: the state of 2026-11-02" in build(DAYS[2]) and mode(tables) == "incremental"
    assert "--full was asked" in build(DAYS[3], "--full") and mode(tables) == "full"
    assert mode(tables, t.USER_SEQUENCE_STATE) == "full"
    # another max_len: the state of 11-04 (max_len 3) is not advanced
    ov4 = ("sequences.max_len=4", "sequences.lookback_days=3", "quality.max_quarantine_share=0.6")
    out = build(DAYS[4], ov=ov4)
    assert "built with other settings: max_len 3 -> 4" in out and mode(tables) == "full"
    assert published(tables, DAYS[4]) == reference(spark, tables, make_config(tmp_path, *ov4), DAYS[4])
    # another look-back likewise
    assert "lookback_days 3 -> 2" in build(DAYS[5], ov=(*ov4, "sequences.lookback_days=2"))
    # a partition of a shared day reloaded after the state of 11-06 was built: stale, so full
    build(DAYS[5])
    tables.replace_partition(frame(spark, t.EVENTS, [event(6, 1, "2026-11-05T03:00:00")]), t.EVENTS, "2026-11-05")
    out = build(DAYS[6])
    assert "raw/events partition(s) 2026-11-05 changed since the state of 2026-11-06" in out
    assert mode(tables) == "full"
    assert published(tables, DAYS[6]) == reference(spark, tables, cfg, DAYS[6])
    assert 6 in [r["user_id"] for r in published(tables, DAYS[6])]


def test_incremental_refuses_an_emptied_window(spark, tmp_path: Path, lake, capsys) -> None:
    """Every user's behaviours left the window and the day has no valid event: refused unless --allow-empty."""
    _, tables = lake
    put(spark, tables, t.EVENTS, [event(1, 1, "2026-11-01T08:00:00")])
    ov = ("sequences.max_len=3", "sequences.lookback_days=1")
    assert run(build_sequences, tmp_path, "--date", "2026-11-01", overrides=ov) == 0
    version = tables.version(t.USER_SEQUENCES)
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", overrides=ov) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("build_sequences failed: raw/events has no valid rows in 2026-11-02..2026-11-02")
    assert tables.version(t.USER_SEQUENCES) == version
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", "--allow-empty", overrides=ov) == 0
    assert mode(tables) == "incremental" and tables.read(t.USER_SEQUENCES, dt="2026-11-02").count() == 0
