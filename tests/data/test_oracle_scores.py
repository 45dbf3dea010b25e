"""The oracle scores documented in docs/demo_world.md are what the default world gives."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import tables as t
from core.config import load_config
from core.delta import get_tables
from features.demo_world import generate_world
from features.oracle import oracle_scores
from tests.conftest import LOCAL_CONF, TEST_SPARK

DOC = Path(__file__).resolve().parents[2] / "docs" / "demo_world.md"


def documented() -> dict[str, float]:
    text = DOC.read_text()
    block = text.split("<!-- oracle-table:begin -->")[1].split("<!-- oracle-table:end -->")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([0-9.]+) \|$", block, re.M)}


@pytest.mark.slow
def test_default_world_reproduces_documented_oracle_scores(spark, tmp_path: Path) -> None:
    cfg = load_config(LOCAL_CONF, [f"lake_root={tmp_path / 'lake'}", *TEST_SPARK])
    tables = get_tables(spark, cfg)
    for spec, df in generate_world(spark, cfg.demo, cfg.inputs.rank_features_dim).items():
        tables.write(df, spec, "overwrite")
    last_day = tables.partitions(t.EVENTS)[-1]
    assert last_day == "2026-11-14"
    got = oracle_scores(tables, [last_day], cfg.training_set)
    want = documented()
    assert set(want) <= set(got)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=6e-5), name


def test_every_oracle_metric_is_documented(tiny_world) -> None:
    cfg, tables = tiny_world
    got = oracle_scores(tables, [tables.partitions(t.EVENTS)[-1]], cfg.training_set)
    assert set(got) == set(documented())
