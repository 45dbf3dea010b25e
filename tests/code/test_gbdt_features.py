"""build_gbdt_features on inline rows: the hand-crafted features are point in time (behaviour strictly
before each example, popularity from earlier days only) and equal hand-computed values; one row per
example of features/training_examples with its split and labels."""
from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from core import protocol as pr
from core import tables as t
from core.delta import get_tables
from features import gbdt
from features.training_set import impression_slots
from features.gbdt import SIDE_COLUMNS
from jobs import build_gbdt_features, build_hybrid_examples, build_training_set
from tests.conftest import make_config
from tests.helpers import event, put, run, ts

RANGE = ("--start", "2026-11-01", "--end", "2026-11-04")   # train 11-01..02, validation 11-03, test 11-04
OV = ("sequences.max_len=5", "training_set.ppp_validation_user_share=0.0",
      "training_set.ppp_test_user_share=0.001")
RANK = [0.1 * i for i in range(8)]
PRICES = {1: 10.0, 2: 20.0, 3: 100.0, 4: 40.0}
CATEGORY = {1: 7, 2: 7, 3: 8, 4: 7}
MEAN_7 = sum(math.log1p(PRICES[i]) for i in (1, 2, 4)) / 3


def rel(item: int) -> float:
    """log price relative to the category's mean log price (category 7)."""
    return math.log1p(PRICES[item]) - MEAN_7


def impression(user: int, item: int, when: str, clicked: int = 0, scene: str = "search",
               query: str | None = "red shoe") -> dict:
    t0 = ts(when)
    return {"user_id": user, "item_id": item, "scene": scene, "query": query if scene == "search" else None,
            "event_time": t0, "rank_features": RANK, "clicked": clicked, "carted": 0, "bought": 0,
            "dt": t0.date().isoformat()}


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("gbdt")
    tables = get_tables(spark, make_config(tmp))
    put(spark, tables, t.ITEMS, [{"item_id": i, "shop_id": 10 + i, "category_id": CATEGORY[i], "price": p}
                                 for i, p in PRICES.items()])
    put(spark, tables, t.USERS, [{"user_id": 1, "age_level": 2, "gender": "F", "city_level": 1},
                                 {"user_id": 2, "age_level": 4, "gender": "M", "city_level": 2}])
    put(spark, tables, t.EVENTS, [
        event(1, 1, "2026-10-03T09:59:59.999999"),        # 1 us before the 30-day window of 11-02 10:00: out
        event(1, 1, "2026-10-03T10:00:00"),               # the window's first instant: in (30 d only)
        event(1, 1, "2026-11-01T10:00:00"),               # exactly 1 day before: in the 1-day window
        event(1, 3, "2026-11-02T08:00:00"),               # another category
        event(1, 1, "2026-11-02T09:00:00"),               # exactly 1 hour before: in the 1-hour window
        event(1, 2, "2026-11-02T09:30:00", "buy"),
        event(1, 1, "2026-11-02T09:45:00"),
        event(1, 2, "2026-11-02T10:00:00"),               # at the impression's instant: not seen by it
        event(1, 4, "2026-11-02T10:30:00", "buy"),        # after it: seen by the follow and the ppp label
        event(1, 3, "2026-11-03T00:00:00"),               # the next day: not seen by the ppp label of 11-02
    ])
    put(spark, tables, t.IMPRESSIONS, [
        impression(2, 4, "2026-10-25T12:00:00", clicked=1, scene="recommend"),  # 8 days before: out
        impression(2, 4, "2026-10-26T12:00:00", scene="recommend"),             # 7 days before: in
        impression(2, 4, "2026-11-01T12:00:00", clicked=1, scene="recommend"),
        impression(2, 4, "2026-11-01T13:00:00", scene="recommend"),
        impression(2, 4, "2026-11-02T08:00:00", clicked=1, scene="recommend"),  # same day: out
        impression(1, 4, "2026-11-02T10:00:00", clicked=1),                     # the example under test
        impression(1, 3, "2026-11-02T10:00:00"),
        impression(1, 1, "2026-11-03T09:00:00", scene="recommend"),
        impression(1, 2, "2026-11-04T09:00:00", clicked=1, scene="recommend"),
    ])
    put(spark, tables, t.FOLLOWS, [{"user_id": 1, "talent_id": 77, "talent_category_id": 7,
                                    "event_time": ts("2026-11-02T12:00:00"), "followed": 1, "dt": "2026-11-02"}])
    put(spark, tables, t.PPP_LABELS, [{"user_id": 1, "tier": 4, "dt": "2026-11-02"},
                                      {"user_id": 1, "tier": 5, "dt": "2026-11-04"}])
    assert run(build_training_set, tmp, *RANGE, overrides=OV) == 0
    assert run(build_gbdt_features, tmp, *RANGE, overrides=OV) == 0
    assert run(build_hybrid_examples, tmp, *RANGE, overrides=OV) == 0
    cfg = make_config(tmp)
    return tables, gbdt.gbdt_spec(cfg.inputs.rank_features_dim), cfg


def rows_of(built, task: str) -> list:  # noqa: ANN001
    tables, spec, _ = built
    return tables.read(spec).where(F.col("task") == task).collect()


def test_one_row_per_example_with_its_split_and_labels(built) -> None:
    tables, spec, cfg = built
    out = tables.read(spec)
    spec.validate(out.schema)
    ex = tables.read(t.TRAINING_EXAMPLES)
    slots = impression_slots(ex, cfg.inputs.rank_features_dim, cfg.sequences.max_tags)
    want = {r.example_id: ("impressions", r.split, r.label_click, r.ctr_weight, r.l2r_gain, r.dt)
            for r in slots.collect()}
    for r in ex.where(F.col("kind") != "impressions").collect():
        label = r.label_follow if r.kind == "follow" else float(r.label_tier)
        want[r.group_id] = (r.kind, r.split, label, r.follow_weight if r.kind == "follow" else float(r.ppp_user),
                            0.0, r.dt)
    got = {}
    for r in out.collect():
        label = r.label_click if r.task == "impressions" else r.label_follow if r.task == "follow" \
            else float(r.label_tier)
        weight = r.ctr_weight if r.task == "impressions" else r.follow_weight if r.task == "follow" \
            else float(r.ppp_user)
        got[r.example_id] = (r.task, r.split, label, weight, r.l2r_gain if r.task == "impressions" else 0.0, r.dt)
    assert out.count() == len(got) == len(want) == 7 + 1 + 2      # impressions, follow, ppp labels
    assert got == want
    assert {v[1] for v in got.values()} == {pr.TRAIN, pr.VALID, pr.TEST}
    meta = tables.last_metadata(spec)
    assert meta["splits"] == tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]


def test_impression_features_are_point_in_time_and_match_hand_computed_values(built) -> None:
    imp = {(r.user_id, r.event_time, r.label_click): r for r in rows_of(built, "impressions")}
    r = imp[(1, ts("2026-11-02T10:00:00"), 1.0)]                 # item 4, category 7
    # category counts per window: the window edges are in, the example's own instant and later are out
    assert (r.cat_n_1h, r.cat_n_1d, r.cat_n_3d, r.cat_n_30d) == (3.0, 4.0, 4.0, 5.0)
    assert (r.user_n_1h, r.user_n_1d, r.user_n_30d) == (3.0, 5.0, 6.0)
    assert r.cat_share_1h == pytest.approx(1.0) and r.cat_share_1d == pytest.approx(4 / 5)
    assert r.cat_share_30d == pytest.approx(5 / 6)
    # time since the last event / the last buy in the category (the 10:30 buy is later)
    assert r.cat_last_age_h == pytest.approx(0.25) and r.cat_last_buy_age_h == pytest.approx(0.5)
    assert (r.cat_buy_30d, r.user_n_buy, r.user_n_click) == (1.0, 1.0, 5.0)
    # the user's mean relative price of buys: item 2 only, not the later buy of item 4
    assert r.user_rel_price_buy == pytest.approx(rel(2), abs=1e-5)
    assert r.cat_mean_rel_price == pytest.approx((4 * rel(1) + rel(2)) / 5, abs=1e-5)
    assert r.target_rel_price == pytest.approx(rel(4), abs=1e-5)
    assert r.target_price_gap_buy == pytest.approx(rel(4) - rel(2), abs=1e-5)
    assert r.item_n_30d == 0.0 and r.user_distinct_categories == 2.0
    # popularity of the item: impressions of 10-26..11-01 (7 days before, the edge in), not of its own day
    assert r.item_imps_prev == 3.0 and r.item_ctr_prev == pytest.approx((1 + 1) / (3 + 25))
    assert r.has_query == 1.0 and [r[f"rank_{i}"] for i in range(8)] == pytest.approx(RANK)
    # the other impression of the list: category 8, one earlier event there
    other = imp[(1, ts("2026-11-02T10:00:00"), 0.0)]
    assert (other.cat_n_1d, other.cat_last_age_h, other.user_n_1d) == (1.0, 2.0, 5.0)
    assert other.item_n_30d == 1.0 and other.item_last_age_h == pytest.approx(2.0)
    # user 2 has no behaviour: zero counts, no price affinity
    quiet = imp[(2, ts("2026-11-02T08:00:00"), 1.0)]
    assert (quiet.cat_n_30d, quiet.user_n_30d, quiet.cat_share_30d) == (0.0, 0.0, 0.0)
    assert quiet.user_rel_price_buy is None and quiet.item_imps_prev == 3.0
    # for an example of 11-01: 10-25 and 10-26, not the impressions of 11-01 (its own and a later one)
    first = imp[(2, ts("2026-11-01T12:00:00"), 1.0)]
    assert first.item_imps_prev == 2.0 and first.item_ctr_prev == pytest.approx((1 + 1) / (2 + 25))


def test_follow_and_ppp_features_are_point_in_time(built) -> None:
    tables, _, _ = built
    fol = rows_of(built, "follow")
    assert len(fol) == 1
    f = fol[0]
    # the follow at 12:00 sees the 10:00 click and the 10:30 buy, not 11-01 10:00 (26 h before)
    assert (f.cat_n_1d, f.user_n_1d, f.cat_buy_30d) == (5.0, 6.0, 2.0)
    assert f.cat_last_buy_age_h == pytest.approx(1.5) and f.label_follow == 1.0
    talent_category = tables.read(t.TRAINING_EXAMPLES).where(F.col("kind") == "follow").first().talent_category
    assert f.target_category == float(talent_category)
    ppp = {r.dt: r for r in rows_of(built, "ppp")}
    p = ppp["2026-11-02"]
    # stamped at the end of 11-02: both buys, not the 11-03 00:00 click
    assert p.event_time == ts("2026-11-03T00:00:00") and p.label_tier == 3 and p.split == pr.TRAIN
    assert (p.user_n_1d, p.user_n_buy) == (6.0, 2.0)
    assert p.user_rel_price_buy == pytest.approx((rel(2) + rel(4)) / 2, abs=1e-5)
    # the mean log price of the 30 days before the end of 11-02 (10-03 is out)
    assert p.user_log_price_mean == pytest.approx(
        (3 * math.log1p(10) + math.log1p(100) + 2 * math.log1p(20) + math.log1p(40)) / 7, abs=1e-5)
    later = ppp["2026-11-04"]
    assert later.split == pr.TEST and (later.user_n_1d, later.user_n_3d) == (0.0, 7.0)


def _same(a: float, b: float | None) -> bool:
    return (b is None and math.isnan(a)) or (b is not None and (math.isnan(a) and math.isnan(b) or a == b))


def test_hybrid_examples_carry_each_slot_and_follow_row_its_summaries(built) -> None:
    """features/hybrid_examples: every training-examples row, with the GBDT columns of SIDE_COLUMNS of each
    impression slot in slot order (NaN in padding slots and missing values) and of each follow row; the
    metadata names the columns and their training-split knots."""
    tables, spec, cfg = built
    c, g = len(SIDE_COLUMNS), cfg.training_set.group_size
    hybrid = tables.read(t.HYBRID_EXAMPLES)
    t.HYBRID_EXAMPLES.validate(hybrid.schema)
    ex = {r.group_id: r for r in tables.read(t.TRAINING_EXAMPLES).collect()}
    rows = {r.group_id: r for r in hybrid.collect()}
    assert set(rows) == set(ex)
    side = {(r.task, r.example_id): r for r in tables.read(spec).collect()}
    checked = {"impressions": 0, "follow": 0}
    for gid, r in rows.items():
        assert r.seq_item == ex[gid].seq_item and r.split == ex[gid].split  # the examples themselves, unchanged
        assert len(r.slot_side) == g * c and len(r.row_side) == c
        for slot, eid in enumerate(r.example_id):
            got = r.slot_side[slot * c:(slot + 1) * c]
            if r.kind != "impressions" or eid == 0:
                assert all(math.isnan(v) for v in got)
                continue
            want = side[("impressions", eid)]
            assert all(_same(v, want[col]) for v, col in zip(got, SIDE_COLUMNS)), (gid, slot)
            checked["impressions"] += 1
        if r.kind == "follow":
            want = side[("follow", gid)]
            assert all(_same(v, want[col]) for v, col in zip(r.row_side, SIDE_COLUMNS))
            checked["follow"] += 1
        else:
            assert all(math.isnan(v) for v in r.row_side)
    assert checked["impressions"] >= 4 and checked["follow"] == 1
    meta = tables.metadata(t.HYBRID_EXAMPLES, tables.version(t.HYBRID_EXAMPLES))
    assert meta["splits"] == tables.metadata(t.TRAINING_EXAMPLES, tables.version(t.TRAINING_EXAMPLES))["splits"]
    assert meta["side"]["columns"] == list(SIDE_COLUMNS) and len(meta["side"]["knots"]) == c
    train = [r for (task, _), r in side.items() if r.split == pr.TRAIN and task in ("impressions", "follow")]
    for col, knots in zip(SIDE_COLUMNS, meta["side"]["knots"]):
        values = sorted({r[col] for r in train if r[col] is not None and not math.isnan(r[col])})
        assert knots == sorted(knots) and len(set(knots)) == len(knots)
        # a handful of training values: the approximate quantiles are among them, the extremes included
        assert all(any(abs(k - v) < 1e-6 for v in values) for k in knots), col
        if values:
            assert knots[0] == pytest.approx(values[0]) and knots[-1] == pytest.approx(values[-1])
