"""jobs/maintenance.py clean: what a killed write leaves (a staging folder, files no version references)
is removed once old enough; committed files of every version, and recent leftovers, stay."""
from __future__ import annotations

import pytest

import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from core import tables as t
from core.delta import get_tables
from jobs import maintenance
from tests.conftest import make_config
from tests.helpers import event, put, run

DAY = "2026-11-02"


def _age(path: Path, hours: float) -> None:
    old = time.time() - hours * 3600
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (old, old))


def _killed_write_leftovers(tables, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The state a write killed after its move, and one killed before it, leave: an uncommitted
    file in the partition folder and a staging folder (both a day old), and a fresh staging folder."""
    folder = Path(tables.uri(t.EVENTS)) / f"dt={DAY}"
    committed = next(folder.glob("*.parquet"))
    stray = folder / "part-99999-killed.c000.snappy.parquet"
    shutil.copy(committed, stray)
    staging = Path(tables.uri(t.EVENTS)) / "_staging" / "0123abcd" / f"dt={DAY}"
    staging.mkdir(parents=True)
    shutil.copy(committed, staging / "part-00000.parquet")
    _age(stray, 30)
    _age(staging.parent, 30)
    fresh = Path(tables.uri(t.EVENTS)) / "_staging" / "fresh"
    fresh.mkdir()
    shutil.copy(committed, fresh / "part-00000.parquet")
    return stray, staging.parent, fresh


@pytest.mark.reliability(
    "faults",
    "staging folders and never-committed files left by killed writes",
    "never read by Delta readers; removed by jobs/maintenance.py clean once older than the minimum "
    "age; every version's files and recent leftovers kept")
def test_clean_removes_old_leftovers_only(spark, tmp_path: Path, capsys) -> None:
    cfg = make_config(tmp_path)
    tables = get_tables(spark, cfg)
    put(spark, tables, t.EVENTS, [event(u, 1, f"{DAY}T08:00:00") for u in (1, 2, 3)])
    # a second version replaces the partition: version 0's files must survive (time travel)
    tables.replace_partition(tables.read(t.EVENTS, dt=DAY).where("user_id < 3"), t.EVENTS, DAY)
    stray, old_staging, fresh = _killed_write_leftovers(tables, tmp_path)
    folder = stray.parent
    assert pq.read_table(folder).num_rows > 2 + 3  # a plain Parquet reader of the folder sees the stray rows

    assert run(maintenance, tmp_path, "clean", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "raw/events: would remove 1 staging folder(s) and 1 uncommitted file(s); 1 younger" in out
    assert stray.exists() and old_staging.exists()

    assert run(maintenance, tmp_path, "clean", "--table", "raw/events") == 0
    assert "removed 2 leftover(s) in 1 table(s)" in capsys.readouterr().out
    assert not stray.exists() and not old_staging.exists() and fresh.exists()
    assert tables.read(t.EVENTS, dt=DAY).count() == 2
    assert tables.read(t.EVENTS, version=0).count() == 3  # files of the earlier version kept


@pytest.mark.reliability(
    "config",
    "maintenance of a table that does not exist",
    "one line naming the table and listing the lake's tables")
def test_clean_names_an_unknown_table(spark, tmp_path: Path, capsys) -> None:
    cfg = make_config(tmp_path)
    put(spark, get_tables(spark, cfg), t.EVENTS, [event(1, 1, f"{DAY}T08:00:00")])
    assert run(maintenance, tmp_path, "clean", "--table", "features/nope") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("maintenance failed: no Delta table features/nope under ") and "raw/events" in err
