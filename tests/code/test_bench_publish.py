"""The nightly job's benchmark: the bound its reading and writing set on its share of the ceiling."""
from __future__ import annotations

from benchmarks.bench_publish import io_bound, share_bound


def test_the_bound_replaces_only_the_forward_passes_with_the_ceilings() -> None:
    # 1,000 users at a ceiling of 100 users/s: a forward of 10 s wall, 20 task-seconds on two tasks
    assert abs(share_bound(1000, 20.0, 100.0, 20.0) - 0.5) < 1e-12  # forward already at the ceiling
    # 10 task-seconds slower forward passes cost 5 s of wall: without them 15 s, i.e. 10 / 15 of the ceiling
    assert abs(share_bound(1000, 20.0, 100.0, 30.0) - 10 / 15) < 1e-12
    # nothing but forward passes: the bound is the ceiling itself
    assert abs(share_bound(1000, 15.0, 100.0, 30.0) - 1.0) < 1e-12


def test_the_io_bound_adds_only_reading_and_writing_to_a_forward_at_the_ceiling() -> None:
    # 1,000 users at 100 users/s: 20 task-seconds of forward; 5 of reading and 5 of writing -> 20 / 30
    assert abs(io_bound(1000, 100.0, 5.0, 5.0) - 2 / 3) < 1e-12
    assert io_bound(1000, 100.0, 0.0, 0.0) == 1.0
