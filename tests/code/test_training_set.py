"""build_training_set on inline rows: point in time per task, splits, sampling, absent tasks."""
from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import get_tables
from features import encoding as enc
from jobs import build_training_set
from tests.conftest import make_config
from tests.helpers import event, frame, put, run, ts

OV = ("sequences.max_len=5", "sequences.lookback_days=3", "training_set.ctr.negative_rate=1.0",
      "training_set.l2r.negative_rate=1.0")


def impression(user: int, item: int, when: str, clicked: int = 0, bought: int = 0, query: str | None = "red shoe",
               scene: str = "search") -> dict:
    t0 = ts(when)
    return {"user_id": user, "item_id": item, "scene": scene, "query": query, "event_time": t0,
            "rank_features": [0.1 * i for i in range(8)], "clicked": clicked, "carted": 0, "bought": bought,
            "dt": t0.date().isoformat()}


@pytest.fixture()
def world(spark, tmp_path: Path):
    tables = get_tables(spark, make_config(tmp_path))
    put(spark, tables, t.ITEMS, [{"item_id": i, "shop_id": 10 + i, "category_id": 7, "price": 10.0 * i}
                                 for i in range(1, 6)])
    put(spark, tables, t.USERS, [{"user_id": 1, "age_level": 2, "gender": "M", "city_level": 1}])
    put(spark, tables, t.EVENTS, [
        event(1, 1, "2026-11-01T12:00:00"),
        event(1, 2, "2026-11-02T09:59:59.999999", "cart"),    # 1 us before the impression: seen
        event(1, 3, "2026-11-02T10:00:00", "click"),          # at the impression instant: not seen
        event(1, 4, "2026-11-02T10:00:30", "buy"),            # the impression's own later buy: not seen
        event(1, 5, "2026-11-02T23:59:59.999999", "fav"),     # seen by the end-of-day ppp label only
        event(1, 1, "2026-11-03T00:00:00", "click"),          # next day: not seen by the ppp label of 11-02
    ])
    put(spark, tables, t.IMPRESSIONS, [
        impression(1, 4, "2026-11-02T10:00:00", clicked=1, bought=1),
        impression(1, 5, "2026-11-02T10:00:00"),
        impression(1, 3, "2026-11-03T08:00:00", scene="recommend", query=None),
    ])
    put(spark, tables, t.FOLLOWS, [{"user_id": 1, "talent_id": 77, "talent_category_id": 7,
                                    "event_time": ts("2026-11-02T11:00:00"), "followed": 1, "dt": "2026-11-02"}])
    put(spark, tables, t.PPP_LABELS, [{"user_id": 1, "tier": 6, "dt": "2026-11-02"}])
    return tables


def examples(tables):  # noqa: ANN001, ANN201
    return {(r.task, r.dt, r.item if r.task in ("ctr", "l2r") else r.talent): r
            for r in tables.read(t.TRAINING_EXAMPLES).collect()}


def items_seen(row) -> list[int]:  # noqa: ANN001
    return row.seq_item[:row.seq_len]


def test_each_task_sees_only_strictly_earlier_behaviour(spark, tmp_path: Path, world) -> None:
    tables = world
    assert run(build_training_set, tmp_path, "--start", "2026-11-01", "--end", "2026-11-03", overrides=OV) == 0
    rows = tables.read(t.TRAINING_EXAMPLES).collect()
    by_task = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    assert sorted(by_task) == ["ctr", "follow", "l2r", "ppp"]
    b = enc.BEHAVIOR_INDEX
    ctr_clicked = next(r for r in by_task["ctr"] if r.label_click == 1.0)
    assert ctr_clicked.seq_len == 2 and ctr_clicked.seq_behavior[:2] == [b["click"], b["cart"]]
    assert ctr_clicked.event_time == ts("2026-11-02T10:00:00") and ctr_clicked.label_buy == 1.0
    assert ctr_clicked.split == "train" and ctr_clicked.dt == "2026-11-02"
    assert ctr_clicked.item_shop >= 2 and ctr_clicked.item_log_price > 0
    assert sum(1 for q in ctr_clicked.query_tokens if q >= 2) == 2        # "red shoe"
    # follow at 11:00 sees the 10:00 click and the 10:00:30 buy
    fol = by_task["follow"][0]
    assert fol.seq_len == 4 and fol.label_follow == 1.0 and fol.talent >= 2 and fol.item == enc.PAD
    # the ppp label of 11-02 is stamped at the end of the day: it sees 23:59:59.999999, not 11-03 00:00
    ppp = by_task["ppp"][0]
    assert ppp.event_time == ts("2026-11-03T00:00:00") and ppp.label_tier == 5 and ppp.seq_len == 5
    assert ppp.seq_behavior[4] == b["fav"]
    # l2r: one list of two search impressions with a click, weighted by the deepest behaviour
    l2r = sorted(by_task["l2r"], key=lambda r: -r.l2r_weight)
    assert len(l2r) == 2 and l2r[0].group_id == l2r[1].group_id != 0
    assert [r.l2r_weight for r in l2r] == [enc.L2R_WEIGHTS["buy"], enc.L2R_WEIGHTS["none"]]
    # the last day is held out
    held = [r for r in rows if r.dt == "2026-11-03"]
    assert held and all(r.split == "holdout" for r in held)
    assert {r.task_id for r in rows} == {t.TASK_IDS[k] for k in by_task}
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    assert meta["holdout_days"] == ["2026-11-03"] and meta["sampling"]["ctr"]["negative_rate"] == 1.0
    assert meta["tasks"] == ["ctr", "l2r", "follow", "ppp"]


def test_absent_label_table_disables_its_task_with_a_warning(spark, tmp_path: Path, world, capsys, caplog) -> None:
    import shutil

    tables = world
    shutil.rmtree(tables.uri(t.FOLLOWS))
    assert run(build_training_set, tmp_path, "--start", "2026-11-01", "--end", "2026-11-03", overrides=OV) == 0
    assert "skipped tasks (label table absent): follow" in capsys.readouterr().out
    assert any("task follow disabled" in r.getMessage() for r in caplog.records)
    tasks = {r.task for r in tables.read(t.TRAINING_EXAMPLES).select("task").distinct().collect()}
    assert tasks == {"ctr", "l2r", "ppp"}
    assert tables.last_metadata(t.TRAINING_EXAMPLES)["skipped_tasks"] == ["follow"]


def test_sampling_applies_to_the_training_split_only(spark, tmp_path: Path, world) -> None:
    tables = world
    more = [impression(1, 1 + i % 5, f"2026-11-0{2 + i % 2}T1{i % 10}:{i:02d}:00", scene="recommend", query=None)
            for i in range(40)]
    tables.write(frame(spark, t.IMPRESSIONS, more), t.IMPRESSIONS)
    ov = ("sequences.max_len=5", "sequences.lookback_days=3", "training_set.ctr.negative_rate=0.01",
          "training_set.ctr.positive_upsample=3", "training_set.ctr.cap_per_user_day=10")
    assert run(build_training_set, tmp_path, "--start", "2026-11-01", "--end", "2026-11-03", overrides=ov) == 0
    ctr = tables.read(t.TRAINING_EXAMPLES).where(F.col("task") == "ctr")
    train = ctr.where(F.col("split") == "train").collect()
    positives = [r for r in train if r.label_click == 1.0]
    assert len(positives) == 3 and len({r.example_id for r in positives}) == 3   # up-sampled copies
    assert len(train) - len(positives) < 5                                        # 21 negatives at 1%
    ov_cap = (*ov[:-1], "training_set.ctr.cap_per_user_day=1")
    assert run(build_training_set, tmp_path, "--start", "2026-11-01", "--end", "2026-11-03", overrides=ov_cap) == 0
    ctr = tables.read(t.TRAINING_EXAMPLES).where(F.col("task") == "ctr")
    assert ctr.where(F.col("split") == "train").count() == 1                      # capped per user and day
    holdout = ctr.where(F.col("split") == "holdout").count()
    assert holdout == 1 + 20                                                   # unsampled


def test_range_must_leave_a_training_day(spark, tmp_path: Path, world, capsys) -> None:
    assert run(build_training_set, tmp_path, "--start", "2026-11-02", "--end", "2026-11-02", overrides=OV) == 1
    assert "leaves no training day" in capsys.readouterr().err
