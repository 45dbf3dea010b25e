"""build_training_set on inline rows: one row per example group, point in time per row kind, splits,
sampling of the training split only, the commit metadata, absent tasks."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import protocol as pr
from core import tables as t
from core.delta import get_tables
from features import encoding as enc
from jobs import build_training_set
from tests.conftest import make_config
from tests.helpers import event, frame, put, run, ts

# 2026-11-01..04: training days 11-01 and 11-02, validation 11-03, test 11-04. Every held-out PPP
# user share is as small as the config allows, so that user 1's labels are training labels.
RANGE = ("--start", "2026-11-01", "--end", "2026-11-04")
G = 3
OV = ("sequences.max_len=5", "sequences.lookback_days=3", f"training_set.group_size={G}",
      "training_set.ctr.negative_rate=1.0", "training_set.l2r.negative_rate=1.0",
      "training_set.ppp_validation_user_share=0.0", "training_set.ppp_test_user_share=0.001")
RANK = [0.1 * i for i in range(8)]


def impression(user: int, item: int, when: str, clicked: int = 0, bought: int = 0, query: str | None = "red shoe",
               scene: str = "search") -> dict:
    t0 = ts(when)
    return {"user_id": user, "item_id": item, "scene": scene, "query": query, "event_time": t0,
            "rank_features": RANK, "clicked": clicked, "carted": 0, "bought": bought,
            "dt": t0.date().isoformat()}


def follow(user: int, talent: int, when: str, followed: int, category: int = 7) -> dict:
    t0 = ts(when)
    return {"user_id": user, "talent_id": talent, "talent_category_id": category, "event_time": t0,
            "followed": followed, "dt": t0.date().isoformat()}


@pytest.fixture()
def world(spark, tmp_path: Path):
    tables = get_tables(spark, make_config(tmp_path))
    put(spark, tables, t.ITEMS, [{"item_id": i, "shop_id": 10 + i, "category_id": 7, "price": 10.0 * i,
                                  "tags": ["style:a"]} for i in range(1, 6)])
    put(spark, tables, t.USERS, [{"user_id": 1, "age_level": 2, "gender": "M", "city_level": 1}])
    put(spark, tables, t.EVENTS, [
        event(1, 1, "2026-10-30T09:59:59.999999", "buy"),    # 1 us before the search list's 3-day window: out
        event(1, 2, "2026-10-30T10:00:00", "fav"),           # first instant of that window: in
        event(1, 1, "2026-11-01T12:00:00"),
        event(1, 2, "2026-11-02T09:59:59.999999", "cart"),   # 1 us before the search list: seen
        event(1, 3, "2026-11-02T10:00:00", "click"),         # at the list's instant: not seen by it
        event(1, 4, "2026-11-02T10:00:30", "buy"),           # the list's own later buy: not seen by it
        event(1, 5, "2026-11-02T23:59:59.999999", "fav"),    # seen by the end-of-day ppp label only
        event(1, 1, "2026-11-03T00:00:00", "click"),         # next day: not seen by the ppp label of 11-02
    ])
    put(spark, tables, t.IMPRESSIONS, [
        impression(1, 4, "2026-11-02T10:00:00", clicked=1, bought=1),
        impression(1, 5, "2026-11-02T10:00:00"),
        # a recommendation list of 5 > group_size impressions: two rows
        *[impression(1, i, "2026-11-02T15:00:00", clicked=int(i == 2), scene="recommend", query=None)
          for i in range(1, 6)],
        impression(1, 3, "2026-11-03T08:00:00", scene="recommend", query=None),
        impression(1, 1, "2026-11-04T08:00:00", scene="recommend", query=None),
    ])
    put(spark, tables, t.FOLLOWS, [follow(1, 77, "2026-11-02T11:00:00", 1)])
    put(spark, tables, t.PPP_LABELS, [{"user_id": 1, "tier": 6, "dt": "2026-11-02"}])
    return tables


def slots(row) -> list[dict]:  # noqa: ANN001
    """The real slots of an impressions row, as dicts of the slot columns."""
    scalar = [c for c in t.SLOT_COLUMNS if c not in ("item_tags", "rank_features")]
    return [{c: row[c][i] for c in scalar} for i in range(row.n_items)]


def hashed(spark, value: int, field: str, buckets: int) -> int:  # noqa: ANN001
    return spark.range(1).select(enc.hashed(F.lit(value).cast("bigint"), field, buckets).alias("h")).first().h


def test_one_row_per_example_group_with_its_point_in_time_sequence(spark, tmp_path: Path, world) -> None:
    tables = world
    assert run(build_training_set, tmp_path, *RANGE, overrides=OV) == 0
    rows = tables.read(t.TRAINING_EXAMPLES).collect()
    assert {(r.kind, r.kind_id) for r in rows} == {(k, t.KIND_IDS[k]) for k in t.KINDS}
    b = enc.BEHAVIOR_INDEX
    buckets = make_config(tmp_path).sequences.hash_buckets
    imp = [r for r in rows if r.kind == "impressions"]
    # the search list: one row holding both impressions, padded to G slots
    search = next(r for r in imp if r.event_time == ts("2026-11-02T10:00:00"))
    assert search.n_items == 2 and search.l2r == 1 and search.split == pr.TRAIN and search.dt == "2026-11-02"
    assert len(search.item) == len(search.label_click) == len(search.ctr_weight) == G
    assert len(search.item_tags) == G * 4 and len(search.rank_features) == G * len(RANK)
    assert search.item[2] == enc.PAD and search.ctr_weight[2] == 0.0 and search.label_click[2] == 0.0
    assert search.rank_features[:8] == pytest.approx(RANK) and search.rank_features[16:] == [0.0] * 8
    got = {s["item"]: s for s in slots(search)}
    item4, item5 = hashed(spark, 4, "item_id", buckets.item_id), hashed(spark, 5, "item_id", buckets.item_id)
    assert set(got) == {item4, item5}
    assert (got[item4]["label_click"], got[item4]["label_buy"], got[item4]["l2r_gain"]) == \
        (1.0, 1.0, enc.L2R_WEIGHTS["buy"])
    assert (got[item5]["label_click"], got[item5]["l2r_gain"]) == (0.0, enc.L2R_WEIGHTS["none"])
    assert all(s["ctr_weight"] == 1.0 and s["item_shop"] >= 2 and s["item_log_price"] > 0 for s in got.values())
    assert len({s["example_id"] for s in got.values()}) == 2
    assert sum(1 for q in search.query_tokens if q >= 2) == 2        # "red shoe"
    # its sequence: strictly before 10:00, no older than 3 days (the window's first instant is in)
    assert search.seq_len == 3 and search.seq_behavior[:3] == [b["fav"], b["click"], b["cart"]]
    assert search.seq_behavior[3:] == [enc.PAD, enc.PAD]
    # the follow impression at 11:00 sees the 10:00 click and the 10:00:30 buy
    fol = next(r for r in rows if r.kind == "follow")
    assert fol.seq_len == 4 and fol.seq_behavior[:4] == [b["click"], b["cart"], b["click"], b["buy"]]
    assert fol.label_follow == 1.0 and fol.follow_weight == 1.0 and fol.talent >= 2
    assert fol.n_items == 0 and fol.item == [enc.PAD] * G and fol.label_tier == -1
    # the talent's category is in the item categories' index space: the same index as category 7's items
    assert fol.talent_category == search.item_category[0] == hashed(spark, 7, "category_id", buckets.category_id)
    # the ppp label of 11-02 is stamped at the end of the day: it sees 23:59:59.999999, not 11-03 00:00
    ppp = next(r for r in rows if r.kind == "ppp")
    assert ppp.event_time == ts("2026-11-03T00:00:00") and ppp.label_tier == 5 and ppp.split == pr.TRAIN
    assert ppp.ppp_user == pr.PPP_TRAIN_USER and ppp.n_items == 0 and ppp.talent == enc.PAD
    assert ppp.seq_len == 5 and ppp.seq_behavior == [b["click"], b["cart"], b["click"], b["buy"], b["fav"]]
    # the recommendation list of 5 continues in a second row of the same list, no L2R (no query)
    rec = sorted((r for r in imp if r.event_time == ts("2026-11-02T15:00:00")), key=lambda r: -r.n_items)
    assert [r.n_items for r in rec] == [3, 2] and rec[0].list_id == rec[1].list_id != search.list_id
    assert rec[0].group_id != rec[1].group_id and {r.l2r for r in rec} == {0}
    items = [s["item"] for r in rec for s in slots(r)]
    assert sorted(items) == sorted(hashed(spark, i, "item_id", buckets.item_id) for i in range(1, 6))
    assert sum(s["label_click"] for r in rec for s in slots(r)) == 1.0
    assert rec[1].item[2] == enc.PAD and rec[0].seq_len == rec[1].seq_len == 4     # 10-30 10:00 is out of its window
    # splits by day, one group id per row
    assert {r.dt: r.split for r in rows} == {"2026-11-02": pr.TRAIN, "2026-11-03": pr.VALID, "2026-11-04": pr.TEST}
    assert len({r.group_id for r in rows}) == len(rows)
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    assert meta["splits"] == {"train": ["2026-11-01", "2026-11-02"], "valid": ["2026-11-03"],
                              "test": ["2026-11-04"]}
    assert meta["tasks"] == ["ctr", "l2r", "follow", "ppp"] and meta["group_size"] == G
    assert meta["logit_offsets"] == {"ctr": 0.0, "follow": 0.0}       # unsampled: no correction


def test_every_list_with_a_click_ranks_when_l2r_lists_is_all(spark, tmp_path: Path, world) -> None:
    """``training_set.l2r_lists=all`` (a log without searches): the recommendation list with a click is
    an L2R list too; the lists without a click still are not."""
    tables = world
    assert run(build_training_set, tmp_path, *RANGE, overrides=(*OV, "training_set.l2r_lists=all")) == 0
    imp = [r for r in tables.read(t.TRAINING_EXAMPLES).collect() if r.kind == "impressions"]
    by_time = {(r.event_time, r.group_id): r.l2r for r in imp}
    assert {v for (when, _), v in by_time.items() if when == ts("2026-11-02T15:00:00")} == {1}
    assert {v for (when, _), v in by_time.items() if when == ts("2026-11-02T10:00:00")} == {1}
    assert {v for (when, _), v in by_time.items() if when == ts("2026-11-03T08:00:00")} == {0}


def test_sampling_applies_to_the_training_split_only(spark, tmp_path: Path, world, capsys) -> None:
    tables = world
    days = {"2026-11-02": pr.TRAIN, "2026-11-03": pr.VALID, "2026-11-04": pr.TEST}
    imps, follows = [], []
    for day in days:
        # 8 recommendation lists of 5 impressions with one click each, and a search list of 6 with one click
        imps += [impression(1, 1 + i, f"{day}T1{h}:30:00", clicked=int(i == h % 5), scene="recommend", query=None)
                 for h in range(8) for i in range(5)]
        imps += [impression(1, 1 + i, f"{day}T20:00:00", clicked=int(i == 0), query="blue hat") for i in range(6)]
        follows += [follow(1, 100 + i, f"{day}T21:{i:02d}:00", int(i < 2)) for i in range(20)]
    tables.write(frame(spark, t.IMPRESSIONS, imps), t.IMPRESSIONS)
    tables.write(frame(spark, t.FOLLOWS, follows), t.FOLLOWS)
    ov = (*OV, "training_set.ctr.negative_rate=0.01", "training_set.ctr.positive_upsample=3",
          "training_set.follow.negative_rate=0.01", "training_set.follow.positive_upsample=2")
    assert run(build_training_set, tmp_path, *RANGE, overrides=ov) == 0
    df = tables.read(t.TRAINING_EXAMPLES)
    raw = tables.read(t.IMPRESSIONS)
    for day, split in days.items():
        rows = df.where((F.col("dt") == day) & (F.col("kind") == "impressions")).collect()
        assert {r.split for r in rows} == {split}
        got = [s for r in rows for s in slots(r)]
        positives = [s for s in got if s["label_click"] == 1.0]
        n_raw = raw.where(F.col("dt") == day).count()
        n_pos = raw.where((F.col("dt") == day) & (F.col("clicked") == 1)).count()
        assert len(positives) == n_pos                                 # no positive is ever dropped
        if split == pr.TRAIN:
            assert {s["ctr_weight"] for s in positives} == {3.0}       # weighted positive_upsample
            kept = [s for s in got if s["label_click"] == 0.0 and s["ctr_weight"] > 0]
            assert len(kept) < 5 and {s["ctr_weight"] for s in kept} <= {1.0}   # ~1% of the negatives
            # a dropped negative is gone, unless it is in an L2R list (there with ctr_weight 0)
            dropped = [s for s in got if s["ctr_weight"] == 0.0]
            assert dropped and all(r.l2r == 1 for r in rows for s in slots(r) if s["ctr_weight"] == 0.0)
            lists = [r for r in rows if r.l2r == 1]
            assert sum(r.n_items for r in lists) == 6 + 2             # whole L2R lists (blue hat; red shoe)
            assert len(got) < n_raw
        else:
            assert len(got) == n_raw                                   # unsampled: every impression
            assert {s["ctr_weight"] for s in got} == {1.0}
        fol = df.where((F.col("dt") == day) & (F.col("kind") == "follow")).collect()
        fol = [r for r in fol if r.event_time >= ts(f"{day}T21:00:00")]
        if split == pr.TRAIN:
            assert {r.follow_weight for r in fol if r.label_follow == 1.0} == {2.0}
            assert len([r for r in fol if r.label_follow == 1.0]) == 2
            assert len([r for r in fol if r.label_follow == 0.0]) < 3
        else:
            assert len(fol) == 20 and {r.follow_weight for r in fol} == {1.0}
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    assert meta["logit_offsets"]["ctr"] == pytest.approx(math.log(0.01 / 3))
    assert meta["logit_offsets"]["follow"] == pytest.approx(math.log(0.01 / 2))
    assert meta["sampling"]["ctr"]["negative_rate"] == 0.01 and meta["sampling"]["ctr"]["positive_upsample"] == 3
    assert meta["splits"]["valid"] == ["2026-11-03"] and meta["splits"]["test"] == ["2026-11-04"]
    out = capsys.readouterr().out
    assert "train/impressions=" in out and "valid/impressions=" in out and "test/impressions=" in out
    # capped to one example group per user and day in the training split only
    ov_cap = (*ov, "training_set.ctr.cap_per_user_day=1")
    before = {s: df.where((F.col("split") == s) & (F.col("kind") == "impressions")).count()
              for s in (pr.VALID, pr.TEST)}
    assert run(build_training_set, tmp_path, *RANGE, overrides=ov_cap) == 0
    imp = tables.read(t.TRAINING_EXAMPLES).where(F.col("kind") == "impressions")
    per_day = imp.where(F.col("split") == pr.TRAIN).groupBy("user_id", "dt").count().collect()
    assert per_day and {r["count"] for r in per_day} == {1}
    assert {s: imp.where(F.col("split") == s).count() for s in (pr.VALID, pr.TEST)} == before


def test_absent_label_table_disables_its_task_with_a_warning(spark, tmp_path: Path, world, capsys, caplog) -> None:
    import shutil

    tables = world
    shutil.rmtree(tables.uri(t.FOLLOWS))
    assert run(build_training_set, tmp_path, *RANGE, overrides=OV) == 0
    assert "skipped tasks (label table absent): follow" in capsys.readouterr().out
    assert any("task follow disabled" in r.getMessage() for r in caplog.records)
    kinds = {r.kind for r in tables.read(t.TRAINING_EXAMPLES).select("kind").distinct().collect()}
    assert kinds == {"impressions", "ppp"}
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    assert meta["skipped_tasks"] == ["follow"] and meta["tasks"] == ["ctr", "l2r", "ppp"]


def test_range_must_leave_a_training_day(spark, tmp_path: Path, world, capsys) -> None:
    assert run(build_training_set, tmp_path, "--start", "2026-11-02", "--end", "2026-11-03", overrides=OV) == 1
    assert "leaves no training day" in capsys.readouterr().err


def test_target_priors_count_the_week_before_the_examples_day_only(spark, tmp_path: Path) -> None:
    """``item_query_share`` of a slot: the smoothed share of the earlier searches starting with the list's
    query token that landed in the slot item's category, over the 7 days before the list's day (the day
    itself and older days left out, other tokens ignored; 0 without a query). ``talent_prior`` of a follow
    row: the talent's and the user's follow impressions and smoothed rates over the same days."""
    tables = get_tables(spark, make_config(tmp_path))
    put(spark, tables, t.ITEMS, [{"item_id": i, "shop_id": 10 + i, "category_id": 7 if i < 5 else 8,
                                  "price": 10.0 * i, "tags": ["style:a"]} for i in range(1, 6)])
    put(spark, tables, t.USERS, [{"user_id": 1, "age_level": 2, "gender": "M", "city_level": 1}])
    put(spark, tables, t.EVENTS, [
        *[event(u, 1, "2026-10-28T12:00:00", scene="search", query="Red dress") for u in (2, 3, 4)],
        event(2, 5, "2026-10-26T00:00:00", scene="search", query="red"),          # first day of the week: in
        event(2, 5, "2026-10-25T23:59:59", scene="search", query="red"),          # 8 days before: out
        event(3, 5, "2026-11-02T09:00:00", scene="search", query="red"),          # the list's own day: out
        event(3, 2, "2026-10-29T09:00:00", scene="search", query="blue shoe"),    # another token: out
        event(4, 2, "2026-10-29T09:00:00", scene="recommend", query="red"),       # not a search: out
    ])
    put(spark, tables, t.IMPRESSIONS, [
        impression(1, 2, "2026-11-02T10:00:00", clicked=1, query="red shoe"),
        impression(1, 5, "2026-11-02T10:00:00", query="red shoe"),
        impression(1, 3, "2026-11-02T15:00:00", clicked=1, scene="recommend", query=None),
        impression(1, 3, "2026-11-03T08:00:00", scene="recommend", query=None),
        impression(1, 1, "2026-11-04T08:00:00", scene="recommend", query=None),
    ])
    put(spark, tables, t.FOLLOWS, [
        follow(2, 77, "2026-10-30T10:00:00", 1), follow(3, 77, "2026-10-31T10:00:00", 0),
        follow(4, 77, "2026-11-01T10:00:00", 0), follow(4, 77, "2026-10-20T10:00:00", 1),   # 10-20: out
        follow(1, 88, "2026-10-31T10:00:00", 0),
        follow(5, 77, "2026-11-02T09:00:00", 1),                                          # the same day: out
        follow(1, 77, "2026-11-02T11:00:00", 1),
    ])
    put(spark, tables, t.PPP_LABELS, [{"user_id": 1, "tier": 6, "dt": "2026-11-02"}])
    assert run(build_training_set, tmp_path, *RANGE, overrides=OV) == 0
    rows = tables.read(t.TRAINING_EXAMPLES).collect()
    buckets = make_config(tmp_path).sequences.hash_buckets
    search = next(r for r in rows if r.kind == "impressions" and r.event_time == ts("2026-11-02T10:00:00"))
    share = {s["item"]: s["item_query_share"] for s in slots(search)}
    # "red": 3 searches in category 7 (item 1) and 1 in category 8 (item 5) in 10-26..11-01
    assert share[hashed(spark, 2, "item_id", buckets.item_id)] == pytest.approx((3 + 0.01) / (4 + 1))
    assert share[hashed(spark, 5, "item_id", buckets.item_id)] == pytest.approx((1 + 0.01) / (4 + 1))
    assert search.item_query_share[2] == 0.0                                          # padding
    rec = next(r for r in rows if r.kind == "impressions" and r.event_time == ts("2026-11-02T15:00:00"))
    assert rec.item_query_share == [0.0] * G                                         # no query
    fol = next(r for r in rows if r.kind == "follow" and r.user_id == 1)
    assert fol.talent_prior == pytest.approx([3.0, (1 + 0.5) / (3 + 3), 1.0, (0 + 0.5) / (1 + 3)])
    assert all(r.talent_prior == [0.0] * 4 for r in rows if r.kind != "follow")
