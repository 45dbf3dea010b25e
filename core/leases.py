"""Write leases: one run at a time writes a given partition of a table, and a second run is refused
at its start, before it does any work.

Delta's optimistic commit already keeps a partition consistent when two runs replace it: the
later commit wins and the history shows both. But both runs do the whole work, and the loser's
output silently replaces the winner's. A lease makes the conflict early and explicit:

    with lease(tables.uri(t.USER_REPRESENTATIONS), t.USER_REPRESENTATIONS.name, ["2026-11-14"], holder):
        ...  # compute and commit dt=2026-11-14

On a local or mounted file system (the embedded default) a lease is an exclusive ``flock`` on
``<table>/_leases/dt=<day>.lease``. The operating system drops it when the holder exits, however it
exits (SIGKILL included), so a killed run never leaves a lease behind. The file also records who holds
it (job, run id, host, pid, start) for the refusal line. Object stores (``s3://``...) have no such lock:
there the lease is skipped with a log line and Delta's optimistic commit is the only guard.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import time
from typing import Iterator, Sequence

from core.errors import PlatformError

logger = logging.getLogger(__name__)

LEASE_DIR = "_leases"


class PartitionBusy(PlatformError):
    """Another run holds the lease of a partition this run wants to write."""


def _holder_line(path: str, wait_s: float = 2.0) -> str:
    """Who holds the lease at ``path``. The holder writes its record just after it takes the lock,
    so a run refused in that instant finds the file empty: it reads again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path) as f:
                h = json.load(f)
            return f"{h['job']} run {h['run_id']} (pid {h['pid']} on {h['host']}, since {h['since']})"
        except (OSError, ValueError, KeyError):  # the holder has not written its record yet
            if time.monotonic() >= deadline:
                return "another run"
            time.sleep(0.05)


@contextlib.contextmanager
def lease(table_path: str, table: str, days: Sequence[str], job: str, run_id: str) -> Iterator[None]:
    """Hold the write leases of partitions ``days`` of ``table`` (local folder ``table_path``; a URI
    means an object store) for the block.

    Raises :class:`PartitionBusy`, naming the holder, when another run holds one of them; leases taken
    before that are released."""
    if "://" in table_path:
        logger.info("no write lease on %s (object store): Delta's optimistic commit is the only guard", table)
        yield
        return
    folder = os.path.join(table_path, LEASE_DIR)
    os.makedirs(folder, exist_ok=True)
    record = json.dumps({"job": job, "run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                         "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    with contextlib.ExitStack() as held:
        for day in sorted(set(days)):
            path = os.path.join(folder, f"dt={day}.lease")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartitionBusy(
                    f"{table} dt={day} is being written by {_holder_line(path)}: not starting a second write; "
                    f"wait for that run to finish (its lease {path} is released when it exits), then re-run") from None
            held.callback(fcntl.flock, fd, fcntl.LOCK_UN)
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            # the record is cleared before the lock is dropped, so the next holder's refusals never
            # name this run (a killed run leaves its record, which the next holder overwrites)
            held.callback(os.ftruncate, fd, 0)
        yield
