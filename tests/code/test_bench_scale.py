"""benchmarks/bench_scale.py: the exponents and the projection are computed from what was measured."""
from __future__ import annotations

import math

import pytest

from benchmarks.bench_scale import STAGES, Days, analyse, report
from benchmarks.common import ROOT
from core.config import load_config

STARTUP = STAGES[0].name


def run(events: int, scale: float, startup: float = 10.0) -> dict:
    """A recorded run whose stages take ``startup`` + ``scale`` × 100 s (Spark) or ``scale`` s (no Spark)."""
    stages = {s.name: {"seconds": (startup + scale * 100 if s.spark else scale) if s.name != STARTUP else startup,
                       "peak_rss_mb": 1000.0 * scale, "driver_rss_mb": 150.0}
              for s in STAGES}
    return {"users": events // 100, "events": events, "days": 14, "built_days": 10, "training_days": 8,
            "sequence_users": events // 100, "published_users": events // 100, "training_rows": events // 10,
            "stages": stages}


def test_linear_work_after_the_startup_has_exponent_one_and_a_flat_driver_zero() -> None:
    small, big = run(1_000_000, 1.0), run(4_000_000, 4.0)
    rows = {r["stage"]: r for r in analyse(small, big, events_per_day=4_000_000 / 14 * 10)}
    train = rows["training, 1 epoch"]
    assert train["exponent"] == pytest.approx(1.0)       # (410 - 10) / (110 - 10) = 4 for 4x the events
    assert train["rss_exponent"] == pytest.approx(1.0)
    assert train["driver_rss_exponent"] == pytest.approx(0.0)
    # 10x the larger world's events a day: start-up + 400 s x 10
    assert train["projected_s"] == pytest.approx(10 + 400 * 10)
    assert train["daily_s"] == pytest.approx((10 + 4000) / 8)  # one of the 8 training days
    assert rows[STARTUP]["projected_s"] is None


def test_a_superlinear_stage_is_projected_with_its_exponent() -> None:
    small, big = run(1_000_000, 1.0), run(4_000_000, 8.0)  # twice the work per event at 4x: b = 1.5
    rows = {r["stage"]: r for r in analyse(small, big, events_per_day=4_000_000 / 14 * 100)}
    seq = rows["sequences, incremental"]
    assert seq["exponent"] == pytest.approx(1.5)
    assert seq["projected_s"] == pytest.approx(10 + 800 * 100 ** 1.5)
    assert rows["query user"]["exponent"] == pytest.approx(math.log(8) / math.log(4))  # no start-up removed
    assert rows["query user"]["projected_s"] is None  # latency, not a batch stage


def test_a_sublinear_exponent_is_projected_as_linear() -> None:
    """Below 1 the exponent measures a fixed cost per job that small sizes do not amortise."""
    small, big = run(1_000_000, 1.0), run(4_000_000, 2.0)  # b = 0.5
    rows = {r["stage"]: r for r in analyse(small, big, events_per_day=4_000_000 / 14 * 100)}
    assert rows["statistics"]["exponent"] == pytest.approx(0.5)
    assert rows["statistics"]["projected_s"] == pytest.approx(10 + 200 * 100)


def test_the_days_of_a_world_and_the_report() -> None:
    days = Days.of(load_config(ROOT / "conf" / "local.yaml"))  # 14 days, the first 4 a warm-up
    assert (days.n_built(), days.n_train()) == (10, 8)
    text = report([run(1_000_000, 1.0), run(4_000_000, 4.0)], 1e9, 0.05, 2, "python -m benchmarks.bench_scale", 60)
    assert "| training, 1 epoch | 110.0 | 410.0 |" in text
    assert "Daily total:" in text and "core-hours" in text
    assert "Stages growing faster than the events (b > 1.1): none." in text
    assert "Python drivers that grew by more than a quarter (and 50 MB) with 4.0× the events: none." in text
    grown = run(4_000_000, 4.0)
    grown["stages"]["nightly job (publish)"]["driver_rss_mb"] = 900.0
    text = report([run(1_000_000, 1.0), grown], 1e9, 0.05, 2, "python -m benchmarks.bench_scale", 60, "here")
    assert "4.0× the events: nightly job (publish) (150 → 900 MB)." in text
