"""Storage that fails under a write: a file where a table folder should be, a read-only lake, a
full disk. Each is one line naming the table and the fix; the table stays at its version, readable."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from pyspark.sql import functions as F

from core import tables as t
from core.delta import DeltaTables, get_tables
from core.errors import PlatformError
from tests.conftest import make_config
from tests.helpers import event, frame, put

DAY = "2026-11-02"


@contextlib.contextmanager
def _tmpfs_lake(spark, tmp_path: Path, size: str) -> Iterator[DeltaTables]:  # noqa: ANN001
    """A lake on a tmpfs of ``size`` holding raw/events v0 (3 rows); unmounted afterwards."""
    lake = tmp_path / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(lake)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        tables = get_tables(spark, make_config(tmp_path))
        put(spark, tables, t.EVENTS, _events(3))
        yield tables
    finally:
        subprocess.run(["umount", "-l", str(lake)], check=False)


def _assert_unchanged(tables: DeltaTables) -> None:
    assert tables.version(t.EVENTS) == 0 and tables.read(t.EVENTS).count() == 3


def _events(n_users: int) -> list[dict]:
    return [event(u, u % 97, f"{DAY}T08:00:00", query="q" * 200) for u in range(n_users)]


def _one_line(exc: pytest.ExceptionInfo[PlatformError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Py4JJavaError" not in message and "\tat " not in message
    return message


@pytest.mark.reliability(
    "faults", "a file where a table folder should be",
    "one line naming the table, the path and the fix, before any work; nothing written")
def test_a_file_where_the_table_should_be(spark, tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tables = get_tables(spark, cfg)
    path = Path(tables.uri(t.EVENTS))
    path.parent.mkdir(parents=True)
    path.write_text("not a table")
    with pytest.raises(PlatformError) as exc:
        put(spark, tables, t.EVENTS, _events(3))
    message = _one_line(exc)
    assert "raw/events" in message and str(path) in message and "lake_root" in message
    assert path.read_text() == "not a table"


@pytest.mark.reliability(
    "faults", "a read-only lake root (a file system remounted read-only, or no write permission)",
    "one line naming the table, the folder and the fix, before any work; the table stays at its version, readable")
def test_a_read_only_lake(spark, tmp_path: Path) -> None:
    with _tmpfs_lake(spark, tmp_path, "64m") as tables:
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "lake")], check=True)
        with pytest.raises(PlatformError) as exc:
            tables.replace_partition(frame(spark, t.EVENTS, _events(5)), t.EVENTS, DAY)
        message = _one_line(exc)
        assert "raw/events" in message and "not writable" in message and "lake_root" in message
        _assert_unchanged(tables)


@pytest.mark.reliability(
    "faults", "a full disk (a 1 MB file system) during a partition replacement",
    "one line naming the table, the cause (no space left) and the fix; nothing committed; the table stays "
    "at its version, readable; no staging folder left")
def test_a_full_disk(spark, tmp_path: Path) -> None:
    with _tmpfs_lake(spark, tmp_path, "1m") as tables:
        # 60,000 rows of random 128-character queries: several MB of Parquet, more than the disk holds
        noise = F.sha2(F.rand(1).cast("string"), 512)
        big = (frame(spark, t.EVENTS, _events(1)).drop("query").crossJoin(spark.range(60_000).select())
               .withColumn("query", noise).select(t.EVENTS.columns).repartition(4))
        with pytest.raises(PlatformError) as exc:
            tables.replace_partition(big, t.EVENTS, DAY)
        message = _one_line(exc)
        assert "raw/events" in message and "nothing was committed" in message
        assert "space" in message.lower(), message
        _assert_unchanged(tables)
        assert not any((Path(tables.uri(t.EVENTS)) / "_staging").glob("*"))


@pytest.mark.reliability(
    "faults", "a lake root that does not exist (a wrong path, an unmounted volume)",
    "one line naming the first input table, the root and the fix; nothing created there")
def test_a_missing_lake_root(spark, tmp_path: Path, capsys) -> None:
    from jobs import build_sequences
    from tests.helpers import run

    root = tmp_path / "not" / "mounted"
    assert run(build_sequences, tmp_path, "--date", "2026-11-02", lake=str(root)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"build_sequences failed: lake_root {root} does not exist (a wrong path or an unmounted volume?): "
                   f"fix lake_root, or create the folder and load the input tables into it"]
    assert not root.exists()
