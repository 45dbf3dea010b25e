"""Feature steps shared by several jobs."""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from core import tables as t
from core.config import Config
from core.errors import PlatformError
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import encode_behaviour, encode_items, encode_users, serving_sequences, window_days

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from core.delta import DeltaTables, WriteResult


def build_user_sequences(tables: "DeltaTables", cfg: Config, day: _dt.date, job: str,
                         run_id: str, allow_empty: bool = False) -> tuple["WriteResult", list[str]]:
    """Validate the look-back window of ``raw/events``, replace ``features/user_sequences``
    partition ``day`` and then the quarantine. Returns the write and the summary lines.

    A window without one valid event is refused (an empty or failed upstream load must not wipe a
    good partition) unless ``allow_empty``; a ``day`` without events of its own adds a warning line."""
    with tables.lease(t.USER_SEQUENCES, day.isoformat(), job, run_id):  # one run per date, refused early
        return _build_user_sequences(tables, cfg, day, job, run_id, allow_empty)


def _build_user_sequences(tables: "DeltaTables", cfg: Config, day: _dt.date, job: str,
                          run_id: str, allow_empty: bool) -> tuple["WriteResult", list[str]]:
    inputs = Inputs(tables, day, cfg.inputs.rank_features_dim)
    window = window_days(day, cfg.sequences.lookback_days)
    events = inputs.partitions(t.EVENTS, window)
    try:
        items = encode_items(inputs.snapshot(t.ITEMS), cfg.sequences)
        users = encode_users(inputs.snapshot(t.USERS))
        lines = enforce_bound(tables, inputs.validations, day, job, run_id, cfg.quality.max_quarantine_share)
        if events.total - events.quarantined <= 0 and not allow_empty:
            raise PlatformError(
                f"{t.EVENTS.name} has no valid rows in {window[0]}..{window[-1]} (the look-back of {day}): refusing "
                f"to replace {t.USER_SEQUENCES.name} dt={day} with an empty partition; load {t.EVENTS.name} for those "
                f"dates (an empty or failed upstream load?), or pass --allow-empty to publish no users")
        if not _has_rows(events.valid, day.isoformat()):
            lines.append(f"warning: {t.EVENTS.name} has no rows of {day} itself: the sequences as of the end of {day} "
                         f"hold earlier days only (is the upstream load of {day} missing?)")
        seq = serving_sequences(encode_behaviour(events.valid), items, users, day, cfg.sequences)
        res = tables.replace_partition(seq, t.USER_SEQUENCES, day.isoformat(), metadata={
            "job": job, "run_id": run_id, "inputs": inputs.versions, "quarantine": events.counts,
            "max_len": cfg.sequences.max_len, "lookback_days": cfg.sequences.lookback_days})
        write_quarantine(tables, inputs.validations, day, job, run_id)
    finally:
        release(*inputs.validations)
    return res, lines


def _has_rows(events: "DataFrame", ds: str) -> bool:
    from pyspark.sql import functions as F

    return bool(events.where(F.col("dt") == ds).limit(1).count())
