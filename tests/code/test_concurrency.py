"""Racing runs: two nightly runs of one date, runs of different dates, a reader during a publish."""
from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from core import tables as t
from core.errors import PlatformError
from jobs import publish_user_representations as publish
from tests.conftest import ROOT, SMALL, TINY_END, TINY_WORLD
from tests.helpers import run

OV = (*TINY_WORLD, *SMALL)
OTHER_DAY = "2026-11-07"


def _slow_commits(monkeypatch, seconds: float = 3.0) -> None:
    """Make every publish wait ``seconds`` between scoring and its commit, so that runs overlap."""
    from training import inference

    real = inference.check_representations

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "check_representations", slow)


def _together(*jobs: Callable[[], int]) -> list[int]:
    """Start the callables in threads at the same instant; their return values, in order."""
    barrier = threading.Barrier(len(jobs))
    codes: list[int] = [-1] * len(jobs)

    def go(i: int) -> None:
        barrier.wait()
        codes[i] = jobs[i]()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    return codes


def _publish(cfg, tmp, day: str) -> Callable[[], int]:  # noqa: ANN001
    return lambda: run(publish, tmp, "--date", day, overrides=OV, lake=cfg.lake_root)


def _assert_one_copy(tables, day: str, users: int) -> None:  # noqa: ANN001
    part = tables.read(t.USER_REPRESENTATIONS, dt=day)
    assert part.count() == users
    assert part.select("user_id").distinct().count() == users


@pytest.mark.reliability(
    "concurrency", "a second nightly run of a date while one runs",
    "refused at its start in one line naming the running job, run id, host and pid; the table stays at its "
    "version; once the first run ends the date can be published")
def test_a_second_run_of_a_date_is_refused_at_its_start(tiny_published, capsys) -> None:
    cfg, tables, tmp = tiny_published
    before = tables.version(t.USER_REPRESENTATIONS)
    with tables.lease(t.USER_REPRESENTATIONS, TINY_END, "publish_user_representations", "first-run"):
        assert run(publish, tmp, "--date", TINY_END, overrides=OV, lake=cfg.lake_root) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"publish_user_representations failed: outputs/user_representations dt={TINY_END} is "
                              "being written by publish_user_representations run first-run (pid ")
        assert err.endswith("is released when it exits), then re-run")
        assert tables.version(t.USER_REPRESENTATIONS) == before
        # another date is not held
        assert run(publish, tmp, "--date", OTHER_DAY, overrides=OV, lake=cfg.lake_root) == 0
    assert run(publish, tmp, "--date", TINY_END, overrides=OV, lake=cfg.lake_root) == 0
    assert tables.version(t.USER_REPRESENTATIONS) == before + 2


@pytest.mark.reliability(
    "concurrency", "two nightly runs of one date started together",
    "one runs and commits, the other is refused at its start; exactly one copy of the partition; the history "
    "shows one commit, by the run that ran")
def _publish_together(tiny_published, monkeypatch, days: tuple[str, str], commit_s: float) \
        -> tuple[list[int], dict[str, int], int]:  # noqa: ANN001
    """Two nightly runs of ``days`` started together, commits slowed by ``commit_s``: their exit
    codes, the published rows per day before them, and the table's version before them."""
    cfg, tables, tmp = tiny_published
    sizes = {d: tables.read(t.USER_REPRESENTATIONS, dt=d).count() for d in days}
    before = tables.version(t.USER_REPRESENTATIONS)
    _slow_commits(monkeypatch, commit_s)
    return _together(*(_publish(cfg, tmp, d) for d in days)), sizes, before


def test_two_runs_of_one_date_started_together(tiny_published, monkeypatch, capsys) -> None:
    _, tables, _ = tiny_published
    codes, sizes, before = _publish_together(tiny_published, monkeypatch, (TINY_END, TINY_END), 3.0)
    users = sizes[TINY_END]
    assert sorted(codes) == [0, 1]
    err = capsys.readouterr().err
    assert err.count(f"outputs/user_representations dt={TINY_END} is being written by publish_user_representations "
                     "run ") == 1
    assert tables.version(t.USER_REPRESENTATIONS) == before + 1
    assert tables.history(t.USER_REPRESENTATIONS, limit=1)[0].metadata["dt"] == TINY_END
    _assert_one_copy(tables, TINY_END, users)


@pytest.mark.reliability(
    "concurrency", "two nightly runs of different dates started together",
    "both land: two commits, each partition complete, once")
def test_two_dates_published_together_both_land(tiny_published, monkeypatch) -> None:
    _, tables, _ = tiny_published
    codes, sizes, before = _publish_together(tiny_published, monkeypatch, (OTHER_DAY, TINY_END), 1.0)
    assert codes == [0, 0]
    assert tables.version(t.USER_REPRESENTATIONS) == before + 2
    assert sorted(c.metadata["dt"] for c in tables.history(t.USER_REPRESENTATIONS, limit=2)) == sorted(sizes)
    for day, users in sizes.items():
        _assert_one_copy(tables, day, users)


@pytest.mark.reliability(
    "concurrency", "a reader of D while a publish of D runs and commits",
    "every read sees one whole partition, the old or the new, never a mix or a part")
def test_a_reader_during_a_publish_sees_whole_partitions(tiny_published, monkeypatch) -> None:
    cfg, tables, tmp = tiny_published
    users = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END).count()
    before = tables.version(t.USER_REPRESENTATIONS)
    _slow_commits(monkeypatch, 1.0)
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(_publish(cfg, tmp, TINY_END)()))
    writer.start()
    seen: list[tuple[int, int]] = []  # (rows, distinct users) of each read
    while writer.is_alive() or not seen:
        part = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END)
        seen.append((part.count(), part.select("user_id").distinct().count()))
    writer.join()
    assert result == [0]
    assert all(rows == users and distinct == users for rows, distinct in seen), seen
    assert len(seen) >= 3
    latest = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END)
    assert tables.version(t.USER_REPRESENTATIONS) == before + 1 and latest.count() == users


def test_a_lease_is_released_when_its_holder_fails(tiny_published) -> None:
    _, tables, _ = tiny_published
    with pytest.raises(PlatformError, match="boom"):
        with tables.lease(t.USER_REPRESENTATIONS, TINY_END, "job", "a"):
            raise PlatformError("boom")
    with tables.lease(t.USER_REPRESENTATIONS, [TINY_END, OTHER_DAY], "job", "b"):
        with pytest.raises(PlatformError, match=f"dt={OTHER_DAY} is being written by job run b"):
            with tables.lease(t.USER_REPRESENTATIONS, OTHER_DAY, "job", "c"):
                pass


@pytest.mark.reliability(
    "faults", "a run SIGKILLed while it holds a write lease",
    "the operating system drops the lease with the process: the next run of that date is not blocked")
def test_a_killed_holder_leaves_no_lease(tmp_path) -> None:
    import subprocess
    import sys

    from core.leases import lease

    code = ("import os, signal; from core.leases import lease\n"
            f"with lease({str(tmp_path)!r}, 't', ['2026-11-14'], 'job', 'killed'):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert proc.returncode == -9
    assert (tmp_path / "_leases" / "dt=2026-11-14.lease").exists()   # the file stays, the lock does not
    with lease(str(tmp_path), "t", ["2026-11-14"], "job", "next"):
        pass


def test_a_refusal_in_the_instant_before_the_holder_writes_its_record_still_names_it(tmp_path) -> None:
    """The holder takes the lock, then writes who it is: a run refused between the two waits for the
    record instead of naming "another run" (the CI failure of 2026-12-02)."""
    import fcntl
    import json
    import os

    from core.leases import lease

    folder = tmp_path / "_leases"
    folder.mkdir()
    path = folder / "dt=2026-11-14.lease"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, record not yet written
    record = {"job": "job", "run_id": "slow-writer", "pid": 1, "host": "h", "since": "now"}
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps(record).encode(), 0))
    writer.start()
    try:
        with pytest.raises(PlatformError, match="being written by job run slow-writer"):
            with lease(str(tmp_path), "t", ["2026-11-14"], "job", "second"):
                pass
    finally:
        writer.join()
        os.close(fd)


def test_a_released_lease_clears_its_record(tmp_path) -> None:
    from core.leases import lease

    with lease(str(tmp_path), "t", ["2026-11-14"], "job", "first"):
        assert "first" in (tmp_path / "_leases" / "dt=2026-11-14.lease").read_text()
    assert (tmp_path / "_leases" / "dt=2026-11-14.lease").read_text() == ""
