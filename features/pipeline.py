"""Feature steps shared by several jobs."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import unquote

from core import tables as t
from core.config import Config
from core.errors import PlatformError
from features import encoding as enc
from features.inputs import Inputs
from features.quality import enforce_bound, release, write_quarantine
from features.sequences import (advance_state, encode_behaviour, encode_items, encode_users, end_of_day,
                                latest_n_per_user, serving_from_rows, state_of, state_rows, window_days)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from core.delta import DeltaTables, WriteResult

logger = logging.getLogger(__name__)

# What the state's content depends on besides the events: a state built under other values is not advanced.
STATE_FORMAT = 1


def state_encoding() -> str:
    """Digest of what the state's ``behavior``/``scene`` indices and layout depend on."""
    return _digest({"format": STATE_FORMAT, "behavior": enc.BEHAVIOR_INDEX, "scene": enc.SCENE_INDEX,
                    "unknown": enc.UNKNOWN})


def build_user_sequences(tables: "DeltaTables", cfg: Config, day: _dt.date, job: str,
                         run_id: str, allow_empty: bool = False, full: bool = False) \
        -> tuple["WriteResult", list[str]]:
    """Replace ``features/user_sequences`` partition ``day`` (and the state partition ``day`` of
    ``features/user_sequence_state``), then the quarantine. Returns the write and the summary lines.

    Incremental when the state of ``day - 1`` is usable (:func:`previous_state`) and ``full`` is false:
    the state of ``day - 1`` advanced by the valid events of ``day`` (only that partition of
    ``raw/events`` is read and validated). Otherwise a full rebuild from the whole look-back window
    (every partition of it read and validated), with a summary line saying why.

    A window without one valid event (no user left) is refused (an empty or failed upstream load must
    not wipe a good partition) unless ``allow_empty``; a ``day`` without events of its own adds a
    warning line."""
    with tables.lease(t.USER_SEQUENCES, day.isoformat(), job, run_id):  # one run per date, refused early
        return _build_user_sequences(tables, cfg, day, job, run_id, allow_empty, full)


@dataclass(frozen=True)
class PreviousState:
    """The usable state partition of the day before: where it is and its commit metadata."""

    day: str
    version: int
    metadata: dict[str, Any]


def event_files(tables: "DeltaTables", days: Sequence[str], version: int) -> dict[str, str]:
    """Per ``dt`` of ``days`` present in ``raw/events`` at ``version``: a digest of its Parquet file names.
    A reloaded (or appended, or compacted) partition has other files, hence another digest."""
    by_day: dict[str, list[str]] = {}
    for uri in tables.files(t.EVENTS, list(days), version):
        parts = uri.rstrip("/").split("/")
        dts = [unquote(p[3:]) for p in parts if p.startswith("dt=")]
        if dts:
            by_day.setdefault(dts[-1], []).append(unquote(parts[-1]))
    return {d: _digest(sorted(files)) for d, files in sorted(by_day.items())}


def previous_state(tables: "DeltaTables", cfg: Config, day: _dt.date,
                   files: dict[str, str]) -> tuple[PreviousState | None, str]:
    """The state of ``day - 1`` if it may be advanced to ``day``, else (None, why not).

    Usable when its partition exists, its commit recorded the same ``sequences.max_len``,
    ``sequences.lookback_days`` and :func:`state_encoding`, and every ``raw/events`` partition of the
    days both windows share (``files``: :func:`event_files` now) has the files it had when that state
    was built (a partition reloaded since would make the advanced state stale)."""
    prev = (day - _dt.timedelta(days=1)).isoformat()
    spec = t.USER_SEQUENCE_STATE
    if not tables.exists(spec) or prev not in tables.partitions(spec):
        return None, f"no state of {prev} in {spec.name}"
    commit = next((c for c in tables.history(spec) if c.metadata.get("dt") == prev), None)
    if commit is None:
        return None, f"the commit of {spec.name} dt={prev} is not in its history"
    meta = commit.metadata
    want = {"max_len": cfg.sequences.max_len, "lookback_days": cfg.sequences.lookback_days,
            "encoding": state_encoding()}
    changed = [f"{k} {meta.get(k)} -> {v}" for k, v in want.items() if meta.get(k) != v]
    if changed:
        return None, f"the state of {prev} (v{commit.version}) was built with other settings: {', '.join(changed)}"
    before = meta.get("event_files") or {}
    shared = window_days(day, cfg.sequences.lookback_days)[:-1]
    reloaded = [d for d in shared if before.get(d) != files.get(d)]
    if reloaded:
        return None, (f"{t.EVENTS.name} partition(s) {', '.join(reloaded)} changed since the state of {prev} was "
                      f"built (v{commit.version})")
    return PreviousState(prev, commit.version, meta), ""


def _build_user_sequences(tables: "DeltaTables", cfg: Config, day: _dt.date, job: str,
                          run_id: str, allow_empty: bool, full: bool) -> tuple["WriteResult", list[str]]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    sc = cfg.sequences
    ds, as_of = day.isoformat(), end_of_day(day)
    clock = _Clock()
    inputs = Inputs(tables, day, cfg.inputs.rank_features_dim)
    window = window_days(day, sc.lookback_days)
    events_version = tables.version(t.EVENTS) if tables.exists(t.EVENTS) else None
    files = event_files(tables, window, events_version) if events_version is not None else {}
    prev, why = (None, "--full was asked") if full else previous_state(tables, cfg, day, files)
    lines: list[str] = []
    if prev is None:
        logger.info("%s: full rebuild of %s dt=%s: %s", job, t.USER_SEQUENCES.name, ds, why)
        lines.append(f"full rebuild from {window[0]}..{window[-1]}: {why}")
        events = inputs.partitions(t.EVENTS, window, version=events_version)
    else:
        logger.info("%s: incremental build of dt=%s from the state of %s (v%s)", job, ds, prev.day, prev.version)
        lines.append(f"incremental: the state of {prev.day} (v{prev.version}) and the events of {ds}")
        events = inputs.partitions(t.EVENTS, [ds], require=False, version=events_version)
    persisted: list["DataFrame"] = []
    try:
        items = encode_items(inputs.snapshot(t.ITEMS), sc)
        users = encode_users(inputs.snapshot(t.USERS))
        lines += enforce_bound(tables, inputs.validations, day, job, run_id, cfg.quality.max_quarantine_share)
        clock.lap("inputs")
        behaviour = encode_behaviour(events.valid)
        if prev is None:
            _refuse_empty(events.total - events.quarantined <= 0, allow_empty, window, day)
            rows = latest_n_per_user(behaviour, sc.max_len, as_of, sc.lookback_days) \
                .persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(rows)
            state = state_of(rows)
        else:
            old = tables.read(t.USER_SEQUENCE_STATE, dt=prev.day, version=prev.version).drop("dt")
            state = advance_state(old, behaviour, as_of, sc.max_len, sc.lookback_days) \
                .persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(state)
            _refuse_empty(not state.limit(1).count(), allow_empty, window, day)
            rows = state_rows(state, as_of)
        if not _has_rows(events.valid, ds):
            lines.append(f"warning: {t.EVENTS.name} has no rows of {day} itself: the sequences as of the end of {day} "
                         f"hold earlier days only (is the upstream load of {day} missing?)")
        meta = {"job": job, "run_id": run_id, "inputs": inputs.versions, "quarantine": events.counts,
                "max_len": sc.max_len, "lookback_days": sc.lookback_days,
                "mode": "full" if prev is None else "incremental"}
        state_res = tables.replace_partition(state.withColumn("dt", F.lit(ds)), t.USER_SEQUENCE_STATE, ds, metadata={
            **meta, "dt": ds, "encoding": state_encoding(), "event_files": files,
            "validated_days": [d for d in window if d in files] if prev is None else [ds],
            "previous_state": None if prev is None else {"dt": prev.day, "version": prev.version}})
        clock.lap("state")
        lines.append(f"{job}: wrote {state_res.describe()} dt={ds} (the state)")
        seq = serving_from_rows(rows, items, users, day, sc)
        res = tables.replace_partition(seq, t.USER_SEQUENCES, ds, metadata={
            **meta, "state": {t.USER_SEQUENCE_STATE.name: state_res.version}, "seconds": dict(clock.laps)})
        write_quarantine(tables, inputs.validations, day, job, run_id)
    finally:
        release(*inputs.validations)
        for df in persisted:
            df.unpersist()
    return res, lines


class _Clock:
    """Wall seconds of a build's phases before the published write (recorded in its commit metadata):
    ``inputs`` (the state check, reading and validating), ``state`` (the selection or the advance of the
    state, and its write). The rest of a run is assembling and writing the published partition."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


def _refuse_empty(empty: bool, allow_empty: bool, window: list[str], day: _dt.date) -> None:
    if empty and not allow_empty:
        raise PlatformError(
            f"{t.EVENTS.name} has no valid rows in {window[0]}..{window[-1]} (the look-back of {day}): refusing "
            f"to replace {t.USER_SEQUENCES.name} dt={day} with an empty partition; load {t.EVENTS.name} for those "
            f"dates (an empty or failed upstream load?), or pass --allow-empty to publish no users")


def _has_rows(events: "DataFrame", ds: str) -> bool:
    from pyspark.sql import functions as F

    return bool(events.where(F.col("dt") == ds).limit(1).count())


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
