"""Feature steps shared by several jobs."""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from core import tables as t
from core.config import Config
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import encode_behaviour, encode_items, encode_users, serving_sequences, window_days

if TYPE_CHECKING:
    from core.delta import DeltaTables, WriteResult


def build_user_sequences(tables: "DeltaTables", cfg: Config, day: _dt.date, job: str,
                         run_id: str) -> tuple["WriteResult", list[str]]:
    """Validate the look-back window of ``raw/events``, replace ``features/user_sequences``
    partition ``day`` and then the quarantine. Returns the write and the summary lines."""
    inputs = Inputs(tables, day, cfg.inputs.rank_features_dim)
    events = inputs.partitions(t.EVENTS, window_days(day, cfg.sequences.lookback_days))
    try:
        items = encode_items(inputs.snapshot(t.ITEMS), cfg.sequences)
        users = encode_users(inputs.snapshot(t.USERS))
        lines = enforce_bound(tables, [events], day, job, run_id, cfg.quality.max_quarantine_share)
        seq = serving_sequences(encode_behaviour(events.valid), items, users, day, cfg.sequences)
        res = tables.replace_partition(seq, t.USER_SEQUENCES, day.isoformat(), metadata={
            "job": job, "run_id": run_id, "inputs": inputs.versions, "quarantine": events.counts,
            "max_len": cfg.sequences.max_len, "lookback_days": cfg.sequences.lookback_days})
        write_quarantine(tables, [events], day, job, run_id)
    finally:
        release(events)
    return res, lines
