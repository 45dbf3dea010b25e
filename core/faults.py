"""Named kill points, for proving that a job killed at any step leaves every table consistent.

A job passes through :func:`point` at the steps where a kill matters (files staged, files moved into
the table, committed, a model trained, a model registered). With ``PLATFORM_FAULT`` naming one or more
points (comma-separated), the process SIGKILLs itself on reaching one: no ``finally``, no cleanup, as
when the scheduler or the kernel's OOM killer stops it. Without the variable a point does nothing.

    PLATFORM_FAULT=write.moved python -m jobs.publish_user_representations --date 2026-11-14

The reliability suite (``tests/code/test_kills.py``) kills the jobs at these points and checks the
tables afterwards.
"""
from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

ENV = "PLATFORM_FAULT"
POINTS = ("write.staged", "write.moved", "write.committed", "train.trained", "train.registered")


def point(name: str) -> None:
    """SIGKILL this process when ``PLATFORM_FAULT`` names ``name``; otherwise nothing."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r} (known: {', '.join(POINTS)})")
    wanted = os.environ.get(ENV, "")
    if wanted and name in wanted.split(","):
        logger.warning("%s=%s: killing this process (pid %d) at %s", ENV, wanted, os.getpid(), name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
