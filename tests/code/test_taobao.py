"""The Taobao log importer (``features/taobao.py``, ``jobs/import_taobao_userbehavior.py``): the
mapping into the contract's tables, the time-window rule, the next-day lists and their point-in-time
popularity, and the real file when it is present."""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import math
from pathlib import Path

import pandas as pd
import pytest

from core import tables as t
from core.errors import PlatformError
from features.taobao import DEFAULT_FOLDER, FILE, ImportSettings, table_frames
from jobs import import_taobao_userbehavior as job
from tests.helpers import run

UTC = dt.timezone.utc


def ts(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    """Unix seconds of 2017-11-``day`` (December when ``day`` > 30) at ``hour`` UTC."""
    month, d = (12, day - 30) if day > 30 else (11, day)
    return int(dt.datetime(2017, month, d, hour, minute, second, tzinfo=UTC).timestamp())


# users 1..3; items 10.. (category 100 + item // 10); the period is 2017-11-24 16:00 UTC .. 2017-11-28 16:00 UTC
LINES = [
    (1, 10, 101, "pv", ts(24, 18)), (1, 11, 101, "pv", ts(25, 9)), (1, 12, 101, "buy", ts(25, 10)),
    (1, 13, 101, "pv", ts(26, 8)), (1, 13, 101, "cart", ts(26, 9)), (1, 14, 101, "buy", ts(26, 10)),
    (1, 14, 101, "pv", ts(26, 9)),
    (2, 20, 102, "fav", ts(25, 23, 59, 59)), (2, 21, 102, "pv", ts(26, 0, 0, 0)), (2, 22, 102, "pv", ts(26, 1)),
    (2, 22, 102, "pv", ts(26, 1)),  # an exact duplicate line
    (3, 30, 103, "pv", ts(26, 5)),  # first seen on 11-26: no list that day (no history before it)
    (3, 31, 103, "pv", ts(27, 5)),
    (2, 23, 102, "pv", ts(10, 5)),  # before the period: dropped
    (2, 24, 102, "pv", ts(28, 17)),  # from the period's end on: dropped
    (3, 30, 999, "pv", ts(27, 6)),  # item 30 logged under a second category once
] + [(9, 40 + i % 6, 104, "pv", ts(25, 1 + i % 20)) for i in range(60)] \
  + [(9, 40 + i, 104, "pv", ts(26, 20, i)) for i in range(6)]  # a busy user: popularity
PERIOD = ImportSettings(start=dt.datetime(2017, 11, 24, 16, tzinfo=UTC), end=dt.datetime(2017, 11, 28, 16, tzinfo=UTC),
                        ratio=2, popularity_days=7, seed=5)


def write_log(folder: Path, lines=LINES) -> Path:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FILE).write_text("".join(f"{u},{i},{c},{b},{s}\n" for u, i, c, b, s in lines))
    return folder


def frames(spark, tmp_path: Path, settings: ImportSettings = PERIOD):  # noqa: ANN001, ANN201
    out, report = table_frames(spark, write_log(tmp_path / "log") / FILE, settings)
    return {spec: df.toPandas() for spec, df in out.items()}, report


def test_the_log_maps_into_the_contract_tables(spark, tmp_path) -> None:
    tables, report = frames(spark, tmp_path)
    assert (report.source_rows, report.duplicates, report.before_start, report.after_end) == (len(LINES), 1, 1, 1)
    events = tables[t.EVENTS]
    assert report.events == len(events) == len(LINES) - 3
    assert set(events["behavior"]) == {"click", "cart", "fav", "buy"}  # pv -> click
    assert events["scene"].isna().all() and events["query"].isna().all()
    by_item = events.set_index("item_id")
    # Unix seconds in UTC; dt is the UTC date, exactly at the day's edges
    assert by_item.loc[20, "dt"] == "2017-11-25" and by_item.loc[21, "dt"] == "2017-11-26"
    assert by_item.loc[20, "event_time"] == pd.Timestamp("2017-11-25 23:59:59")
    items = tables[t.ITEMS].set_index("item_id")
    assert items.loc[30, "category_id"] == 103 and report.items_with_two_categories == 1
    assert items[["shop_id", "brand_id", "price"]].isna().all().all() and items["tags"].isna().all()
    assert sorted(tables[t.USERS]["user_id"]) == [1, 2, 3, 9]
    assert tables[t.USERS][["age_level", "gender", "city_level"]].isna().all().all()
    for spec, df in tables.items():
        spec.validate(spark.createDataFrame(df.head(0), schema=spec.schema).schema)


def test_next_day_lists_hold_every_touched_item_and_popular_negatives(spark, tmp_path) -> None:
    imp = frames(spark, tmp_path)[0][t.IMPRESSIONS]
    # label days from the period's second UTC day; 11-28 has no event before the period's end
    assert sorted(imp["dt"].unique()) == ["2017-11-25", "2017-11-26", "2017-11-27"]
    day = imp[(imp["user_id"] == 1) & (imp["dt"] == "2017-11-26")]
    pos = day[day["clicked"] == 1].set_index("item_id")
    assert sorted(pos.index) == [13, 14]  # every item touched that day, once
    assert pos.loc[13, "carted"] == 1 and pos.loc[13, "bought"] == 0 and pos.loc[14, "bought"] == 1
    neg = day[day["clicked"] == 0]
    assert len(neg) == 2 * len(pos)  # the ratio
    assert not set(neg["item_id"]) & {13, 14}
    assert (neg[["carted", "bought"]] == 0).all().all()
    # drawn among the items of the day's events (every user's), as the positives are
    of_the_day = {i for _, i, _, _, s in LINES if ts(26, 0) <= s < ts(27, 0)}
    assert set(neg["item_id"]) <= of_the_day
    assert (day["event_time"] == pd.Timestamp("2017-11-26 00:00:00")).all()  # the list sees only earlier days
    # a user is listed on a day only with history before it
    assert imp[(imp["user_id"] == 3) & (imp["dt"] == "2017-11-26")].empty
    assert not imp[(imp["user_id"] == 3) & (imp["dt"] == "2017-11-27")].empty
    assert imp[imp["dt"] == "2017-11-24"].empty  # the first day has no earlier day
    # point-in-time popularity: the busy user's 60 events of 11-25 over 6 items -> 10 each (its events of
    # 11-26 put those items in the day's pool, and are not counted: they are not before the list)
    feats = imp[(imp["dt"] == "2017-11-26") & imp["item_id"].between(40, 45)]["rank_features"]
    assert len(feats) > 0
    for f in feats:
        assert list(f) == pytest.approx([math.log1p(10), math.log1p(60)])
    assert all(len(r) == 2 for r in imp["rank_features"])


def test_the_draw_is_seeded(spark, tmp_path) -> None:
    a = frames(spark, tmp_path / "a")[0][t.IMPRESSIONS].sort_values(["dt", "user_id", "item_id"])
    b = frames(spark, tmp_path / "b")[0][t.IMPRESSIONS].sort_values(["dt", "user_id", "item_id"])
    assert a[["dt", "user_id", "item_id"]].values.tolist() == b[["dt", "user_id", "item_id"]].values.tolist()


def test_bad_input_gets_one_line_naming_the_fix(spark, tmp_path) -> None:
    with pytest.raises(PlatformError, match="Taobao log not found"):
        table_frames(spark, tmp_path / "absent" / FILE, PERIOD)
    bad = write_log(tmp_path / "bad", [(1, 10, 101, "pv", ts(25)), (1, 11, 101, "like", ts(25))]) / FILE
    with pytest.raises(PlatformError, match="behavior_type 'like' is not one of pv, cart, fav, buy"):
        table_frames(spark, bad, PERIOD)
    garbled = write_log(tmp_path / "garbled", [(1, 10, 101, "pv", "yesterday")]) / FILE
    with pytest.raises(PlatformError, match="1 lines do not parse"):
        table_frames(spark, garbled, PERIOD)
    with pytest.raises(PlatformError, match="must be two aware times"):
        ImportSettings(start=dt.datetime(2017, 11, 25), end=dt.datetime(2017, 11, 26))


def test_the_job_writes_four_tables_and_leaves_the_label_tables_absent(spark, tmp_path) -> None:
    from core.delta import get_tables
    from tests.conftest import make_config

    source = write_log(tmp_path / "log")
    args = ("--source", str(source), "--period-start", PERIOD.start.isoformat(), "--period-end",
            PERIOD.end.isoformat(), "--ratio", "2")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(job, tmp_path, *args, overrides=("inputs.rank_features_dim=2",)) == 0
    text = out.getvalue()
    assert f"{len(LINES):,} lines" in text and "dropped 1 exact duplicates, 1 before" in text
    assert "not written (no signal in the log; tasks disabled): raw/follows, raw/ppp_labels, raw/shop_prefs" in text
    tables = get_tables(spark, make_config(tmp_path))
    assert all(tables.exists(s) for s in (t.EVENTS, t.ITEMS, t.USERS, t.IMPRESSIONS))
    assert not any(tables.exists(s) for s in (t.FOLLOWS, t.PPP_LABELS, t.SHOP_PREFS))
    meta = tables.last_metadata(t.IMPRESSIONS)
    assert meta["import"]["before_start_dropped"] == 1 and meta["negatives_per_positive"] == 2
    # the rank features' length must match the config; another world's labels in the lake are refused
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run(job, tmp_path, *args) != 0
    assert "set inputs.rank_features_dim=2" in err.getvalue()
    tables.write(spark.createDataFrame([], t.PPP_LABELS.schema), t.PPP_LABELS, "overwrite")
    with contextlib.redirect_stderr(err):
        assert run(job, tmp_path, *args, overrides=("inputs.rank_features_dim=2",)) != 0
    assert "already holds raw/ppp_labels" in err.getvalue()


def test_the_real_log_imports_with_its_documented_counts(spark, tmp_path) -> None:
    if not (DEFAULT_FOLDER / FILE).is_file():
        pytest.skip(f"the Taobao log is absent ({DEFAULT_FOLDER}); it is never committed")
    tables, report = table_frames(spark, DEFAULT_FOLDER / FILE, ImportSettings())
    assert report.source_rows == 94_225 and report.duplicates == 0
    assert (report.before_start, report.after_end) == (39, 0)  # back to 2017-09-11, as the original file
    assert report.events == sum(report.by_behavior.values()) == 94_186
    imp = tables[t.IMPRESSIONS]
    counts = imp.groupBy("clicked").count().toPandas().set_index("clicked")["count"]
    assert counts[0] == 4 * counts[1]


def test_the_attention_analysis_is_written_as_a_table_and_a_figure(tmp_path) -> None:
    from scripts.taobao import write_attention

    rows, cols = 6, 9  # behaviour index 0..5, age bucket 0..8 (1..8 used)
    mean = [[None] * cols for _ in range(rows)]
    counts = [[0] * cols for _ in range(rows)]
    mean[5][1], counts[5][1] = 2.5, 40  # buys in the last minute: 2.5 × uniform
    mean[2][5], counts[2][5] = 0.8, 1200  # clicks of the last day
    analysis = {"mean_relative_weight": mean, "counts": counts, "edges_s": [60, 300, 1800, 3600, 86400, 259200,
                                                                            604800]}
    write_attention(analysis, tmp_path, {"command": "python -m scripts.taobao --report --attention-out x",
                                         "model": "m v2", "run": "r1", "date": "2026-12-02", "machine": "2 cores"})
    text = (tmp_path / "taobao_attention.md").read_text()
    assert text.startswith("<!-- generated by: python -m scripts.taobao --report --attention-out x (2026-12-02")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines["| buy"].split(" | ")[1] == "2.50 (40)" and lines["| click"].split(" | ")[5] == "0.80 (1,200)"
    assert lines["| fav"].count("–") == 8
    assert (tmp_path / "taobao_attention.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no attention analysis"):
        write_attention({**analysis, "mean_relative_weight": []}, tmp_path, {})


def test_the_pipeline_command_runs_the_demo_jobs_on_the_logs_days() -> None:
    from scripts import demo, taobao

    days = ImportSettings().label_days()
    steps = taobao.steps("conf/taobao.yaml", "SRC", days, ["lake_root=/tmp/x"])
    assert steps[0][:2] == ["jobs.import_taobao_userbehavior", "--config"] and steps[0][-2:] == ["--source", "SRC"]
    assert all(s[1:5] == ["--config", "conf/taobao.yaml", "--set", "lake_root=/tmp/x"] for s in steps)
    train = next(s for s in steps if s[0] == "jobs.build_training_set")
    assert train[-4:] == ["--start", "2017-11-26", "--end", "2017-12-03"]
    demo_jobs = [s[0] for s in demo.steps("conf/local.yaml", dt.date(2026, 11, 1), dt.date(2026, 11, 14))]
    # no shop preferences: no transfer; conf/taobao.yaml trains DUPN-all, conf/local.yaml the detached hybrid
    assert [s[0] for s in steps[1:-1]] == [j for j in demo_jobs if j not in (
        "jobs.generate_demo_world", "jobs.transfer", "scripts.demo", "jobs.build_hybrid_examples")]
    assert "jobs.build_hybrid_examples" in demo_jobs and "jobs.build_hybrid_examples" not in [s[0] for s in steps]
    # with training.hybrid the hybrid examples of the same range follow the training set
    days = ["2026-11-05", "2026-11-06", "2026-11-07"]
    hybrid = demo.daily_steps(["--config", "c"], days, 1, hybrid=True)
    at = [s[0] for s in hybrid].index("jobs.build_training_set")
    assert hybrid[at + 1] == ["jobs.build_hybrid_examples", "--config", "c", "--start", days[0], "--end", days[-1]]
