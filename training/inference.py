"""Scoring users on Spark executors with the user part of a registered model, and the checks a
published result must pass before it is committed.

The driver loads the model once and broadcasts its state (spec + weights, tens of MB); each
executor's Python worker deserialises it **once per process and run** (a module-level cache keyed
by a token the driver draws per run). Two paths run the user part:

* on a local lake (:func:`publish_from_files`, the nightly job's default there), each task reads
  its runs of row groups of the sequence files with pyarrow, scores them and writes the published
  file itself, sorted by ``user_id``, returning only the file's check aggregates
  (:func:`score_user_files`);
* elsewhere, Spark reads the sequences and ``mapInArrow`` scores Arrow record batches
  (:func:`score_users`); Spark then checks and writes the result.

Either way each fixed-length array column becomes one tensor through its flat values buffer
(:func:`arrow_to_batch`), each forward pass scores users of similar length (:func:`score_by_length`)
and the outputs are Arrow list arrays built from flat buffers, with no Python per row and no
pandas. Nothing proportional to the number of users reaches the driver.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pandas as pd

from core import tables as t
from core.errors import DataQualityError, PlatformError

if TYPE_CHECKING:
    import pyarrow as pa

    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from core.config import PublishConfig
    from core.delta import DeltaTables, WriteResult
    from torch import nn

    from training.model import TaskModel

logger = logging.getLogger(__name__)

# the user-side columns of features/user_sequences that the nightly half of a model reads
USER_INPUTS = ("seq_len", "seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_behavior",
               "seq_scene", "seq_time_bucket", "seq_log_price", "user_age", "user_gender", "user_city", "user_dense")
_FLOAT_INPUTS = ("seq_log_price", "user_dense")
_SCALAR_INPUTS = ("seq_len", "user_age", "user_gender", "user_city")


def frame_to_batch(frame: pd.DataFrame) -> dict[str, Any]:
    """User-side columns of a pandas frame (array cells) -> model batch of tensors."""
    import torch

    batch = {}
    for name in USER_INPUTS:
        if name not in frame.columns:
            raise PlatformError(f"model input lacks column '{name}' (a features/user_sequences column)")
        col = frame[name].to_numpy()
        if name in _SCALAR_INPUTS:
            batch[name] = torch.as_tensor(col.astype(np.int64))
        else:
            arr = np.stack([np.asarray(v) for v in col]) if len(col) else np.zeros((0, 1))
            dtype = np.float32 if name in _FLOAT_INPUTS else np.int64
            batch[name] = torch.as_tensor(arr.astype(dtype))
    return batch


def arrow_to_batch(batch: "pa.RecordBatch") -> dict[str, Any]:
    """User-side columns of an Arrow record batch -> model batch of tensors, without Python per row:
    a list column's flat values reshaped to (rows, length).

    Raises:
        PlatformError: a column is missing or an array column's rows differ in length (naming it).
    """
    import pyarrow as pa
    import torch

    batch_cols = set(batch.schema.names)
    out = {}
    n = batch.num_rows
    for name in USER_INPUTS:
        if name not in batch_cols:
            raise PlatformError(f"model input lacks column '{name}' (a features/user_sequences column)")
        col = batch.column(name)
        if name in _SCALAR_INPUTS:
            out[name] = torch.from_numpy(col.to_numpy(zero_copy_only=False).astype(np.int64))
            continue
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        lengths = np.diff(col.offsets.to_numpy())
        if n and (lengths != lengths[0]).any():
            raise PlatformError(f"features/user_sequences column '{name}' holds arrays of lengths "
                                f"{lengths.min()}..{lengths.max()} in one batch: rebuild the partition with "
                                f"build_sequences (every row is padded to one length)")
        width = int(lengths[0]) if n else 1
        values = col.flatten().to_numpy(zero_copy_only=False)
        dtype = np.float32 if name in _FLOAT_INPUTS else np.int64
        matrix = np.ascontiguousarray(values.reshape(n, width).astype(dtype, copy=False))
        with warnings.catch_warnings():  # a zero-copy view of Arrow's buffer: the model only reads it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out[name] = torch.from_numpy(matrix)
    return out


def length_passes(part: "nn.Module", batch: dict[str, Any],
                  forward_batch: int) -> Iterator[tuple[Any, Any, Any]]:
    """The user part over ``batch`` in forward passes of at most ``forward_batch`` users of similar
    ``seq_len``, shortest first: per pass (the batch rows it scored, or None for all of them in order;
    representation; tier probabilities).

    The user tower skips the padding after the longest sequence of a pass (:class:`training.model`),
    so a pass of users sorted by length runs about as many LSTM steps as its own users need rather
    than ``max_len`` for every pass; a user's outputs do not depend on who shares the pass (right
    padding, masked pooling), only the float rounding of the batched kernels does.
    """
    import torch

    n = int(batch["seq_len"].shape[0])
    if n <= forward_batch:
        rep, prob = part(batch)
        yield None, rep, prob
        return
    order = torch.argsort(batch["seq_len"], stable=True)
    for start in range(0, n, forward_batch):
        rows = order[start:start + forward_batch]
        rep, prob = part({k: v.index_select(0, rows) for k, v in batch.items()})
        yield rows, rep, prob


def score_by_length(part: "nn.Module", batch: dict[str, Any], forward_batch: int) -> tuple[Any, Any]:
    """:func:`length_passes`' outputs (representation, tier probabilities) in the batch's row order."""
    import torch

    passes = list(length_passes(part, batch, forward_batch))
    if passes[0][0] is None:
        return passes[0][1], passes[0][2]
    order = torch.cat([rows for rows, _, _ in passes])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return (torch.cat([rep for _, rep, _ in passes]).index_select(0, inverse),
            torch.cat([prob for _, _, prob in passes]).index_select(0, inverse))


def _list_array(matrix: np.ndarray) -> "pa.Array":
    """(rows, width) float32 -> Arrow list<float> from the flat buffer and fixed offsets."""
    import pyarrow as pa

    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)))


def user_outputs(model: "TaskModel", frame: pd.DataFrame) -> pd.DataFrame:
    """``embedding`` (float32 arrays), ``ppp_probs`` (7 floats) and ``ppp_tier`` (1..7) per row."""
    import torch

    part = model.user_part().eval()
    with torch.no_grad():
        rep, probs = part(frame_to_batch(frame))
    probs_np = probs.numpy().astype(np.float32)
    return pd.DataFrame({"embedding": list(rep.numpy().astype(np.float32)), "ppp_probs": list(probs_np),
                         "ppp_tier": tiers(probs_np)})


def load_state_file(path: "str | Path", what: str = "model") -> "TaskModel":
    """The model saved in ``path`` (a ``model_state.pt`` artifact), eval mode.

    Raises:
        PlatformError: the file is missing, truncated or not a model state, naming ``what`` and the path.
    """
    import torch

    from training.trainer import workload_of

    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model = workload_of(state["spec"]).build()  # a DUPN-family or a tabular model
    except PlatformError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = (str(exc).splitlines() or ["no detail"])[0][:200]
        raise PlatformError(f"{what}: cannot read {path} ({type(exc).__name__}: {first}); the artifact is missing "
                            f"or corrupt: re-register the model or pick another version") from None
    model.load_state_dict(state["weights"])
    return model.eval()


_CACHE: dict[str, "nn.Module"] = {}  # the user part of any model family, by the scoring run's token
_LOCK = threading.Lock()
LOADS = {"count": 0}  # how many times this process built a model (tests check "once per process")


def _user_part(state: "Broadcast[bytes]", key: str) -> "nn.Module":
    """The broadcast model's user part, built once per Python worker process and scoring run: ``key``
    is a token the driver draws for each run (a worker outlives runs, and the broadcast object a task
    sees carries no id of its own: its memory address can repeat with another model)."""
    with _LOCK:
        part = _CACHE.get(key)
        if part is None:
            import torch

            from training.trainer import load_state
            from training.model import build_model
            from training.spec import ModelSpec

            torch.set_num_threads(1)  # one Spark task per core
            data = load_state(state.value)
            model = build_model(ModelSpec.from_dict(data["spec"]))
            model.load_state_dict(data["weights"])
            part = model.user_part().eval()
            _CACHE.clear()
            _CACHE[key] = part
            LOADS["count"] += 1
    return part


def _score_batches(batches: Iterable["pa.RecordBatch"], state: "Broadcast[bytes]", key: str, model_name: str,
                   model_version: str, day: str, forward_batch: int) -> Iterator["pa.RecordBatch"]:
    """The user part over Arrow record batches -> ``outputs/user_representations`` record batches
    (each batch's users in forward passes of similar length, :func:`score_by_length`)."""
    import pyarrow as pa
    import torch

    part = _user_part(state, key)
    schema = representation_schema()
    for batch in batches:
        n = batch.num_rows
        if not n:
            continue
        with torch.no_grad():
            rep, probs = score_by_length(part, arrow_to_batch(batch), forward_batch)
        probs_np = probs.numpy().astype(np.float32)
        yield pa.RecordBatch.from_arrays(
            _published_arrays(batch.column("user_id"), rep.numpy(), probs_np, tiers(probs_np),
                              (model_name, model_version, day)), schema=schema)


def tiers(probs: np.ndarray) -> np.ndarray:
    """The published tier 1..7 of each row of tier probabilities (N, 7)."""
    return probs.argmax(axis=1).astype(np.int32) + 1


def _published_arrays(user_ids: Any, rep: np.ndarray, probs: np.ndarray, tier: np.ndarray,
                      strings: tuple[str, ...]) -> list["pa.Array"]:
    """The published columns in the table's order, the trailing string columns (model name, version
    and, where the file holds it, dt) repeated on every row."""
    import pyarrow as pa

    n = len(rep)
    return [pa.array(user_ids), _list_array(rep), pa.array(tier), _list_array(probs),
            *(pa.repeat(pa.scalar(v, pa.string()), n) for v in strings)]


def representation_schema() -> "pa.Schema":
    """``outputs/user_representations`` as an Arrow schema (what ``mapInArrow`` must yield)."""
    import pyarrow as pa

    f32 = pa.list_(pa.float32())
    return pa.schema([("user_id", pa.int64()), ("embedding", f32), ("ppp_tier", pa.int32()), ("ppp_probs", f32),
                      ("model_name", pa.string()), ("model_version", pa.string()), ("dt", pa.string())])


def score_users(sequences: "DataFrame", state: bytes, model_name: str, model_version: str, day: _dt.date,
                partitions: int | None = None, batch_size: int | None = None,
                forward_batch: int | None = None) -> "DataFrame":
    """``outputs/user_representations`` rows for every row of ``sequences`` (``features/user_sequences``).

    ``partitions``: spread the input over at least this many tasks; ``batch_size``: users per
    Arrow batch (``publish.batch_size``), sorted by length within it and scored in forward passes
    of ``forward_batch`` users (``publish.forward_batch``; None: one pass per Arrow batch).
    """
    spark = sequences.sparkSession
    if batch_size:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    bstate, key = spark.sparkContext.broadcast(state), uuid.uuid4().hex
    name, version, ds = model_name, model_version, day.isoformat()
    passes = forward_batch or batch_size or 1 << 30
    inputs = sequences.select("user_id", *USER_INPUTS)
    if partitions and inputs.rdd.getNumPartitions() < partitions:
        # spread a table of few files over the executors; a table already split as finely is not
        # shuffled (every row's sequence arrays would cross the network once more)
        inputs = inputs.repartition(partitions)

    def score(batches: Iterable["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        return _score_batches(batches, bstate, key, name, version, ds, passes)

    return inputs.mapInArrow(score, t.USER_REPRESENTATIONS.schema)


# a published file's columns: the table's without the partition column (Delta keeps it in the log)
_FILE_COLUMNS = tuple(c for c in t.USER_REPRESENTATIONS.columns if c not in t.USER_REPRESENTATIONS.partition_by)


def _file_stats(emb: np.ndarray, probs: np.ndarray, tier: np.ndarray, null_ids: int) -> dict[str, float]:
    """:func:`check_representations`'s aggregates over one scored file (numpy over its matrices; the
    uniqueness of user_id is checked over all files at once)."""
    return {"rows": float(len(emb)), "nulls": float(null_ids),
            "non_finite": float((~np.isfinite(emb).all(axis=1) | ~np.isfinite(probs).all(axis=1)).sum()),
            "min_dim": float(emb.shape[1]), "max_dim": float(emb.shape[1]),
            "bad_prob_len": 0.0 if probs.shape[1] == 7 else float(len(probs)),
            "max_prob_sum_error": float(np.abs(probs.astype(np.float64).sum(axis=1) - 1).max()),
            "bad_tier": float(((tier < 1) | (tier > 7)).sum())}


_LOWEST, _HIGHEST = ("min_dim",), ("max_dim", "max_prob_sum_error")


def _merge_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """The files' aggregates as one: counts add up, the bounds are the extremes (a NaN stays NaN, so the
    check it feeds fails)."""
    out: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            combine = np.minimum if key in _LOWEST else np.maximum if key in _HIGHEST else np.add
            out[key] = value if key not in out else float(combine(out[key], value))
    return out


Unit = tuple[int, str, list[int]]  # (index, file, the run of its row groups)


def _score_unit(unit: Unit, state: "Broadcast[bytes]", key: str, folder: str, model_name: str,
                model_version: str, batch_size: int, forward_batch: int, row_group_bytes: int) -> dict[str, Any]:
    """One task's work: score the users of a run of row groups of a sequences file and write
    their representations, sorted by user_id, as one Parquet file in ``folder``. Each forward pass's
    outputs go straight into (users, width) matrices at their users' sorted rows, so no Arrow list
    or output batch is copied or taken. Returns the file's checks and the task's seconds per phase
    (:data:`TASK_PHASES`)."""
    import pyarrow.parquet as pq
    import torch

    index, path, row_groups = unit
    os.makedirs(folder, exist_ok=True)
    clock = time.perf_counter()
    part = _user_part(state, key)
    source = pq.ParquetFile(path)
    id_col = source.read_row_groups(row_groups, columns=["user_id"]).column(0)
    n = len(id_col)
    if not n:
        return {"rows": 0.0}
    ids = id_col.to_numpy()
    order = np.argsort(ids, kind="stable")  # row i of the file goes to row at[i] of the output
    at = np.empty(n, dtype=np.int64)
    at[order] = np.arange(n)
    emb: np.ndarray | None = None
    probs = np.empty((n, 7), dtype=np.float32)
    start = 0
    seconds = dict.fromkeys(TASK_PHASES, 0.0)
    batches = source.iter_batches(batch_size=batch_size, row_groups=row_groups, columns=list(USER_INPUTS))
    while (batch := next(batches, None)) is not None:
        tensors = arrow_to_batch(batch)
        clock = _lap(seconds, "task_read_s", clock)
        rows = at[start:start + batch.num_rows]
        with torch.no_grad():
            for scored, rep, prob in length_passes(part, tensors, forward_batch):
                out = rows if scored is None else rows[scored.numpy()]
                if emb is None:
                    emb = np.empty((n, rep.shape[1]), dtype=np.float32)
                emb[out] = rep.numpy()
                probs[out] = prob.numpy()
        start += batch.num_rows
        clock = _lap(seconds, "task_forward_s", clock)
    clock = _lap(seconds, "task_read_s", clock)  # the reader's end
    assert emb is not None and start == n
    tier = tiers(probs)
    stats = _file_stats(emb, probs, tier, id_col.null_count)
    write_published(f"{folder}/part-{index:05d}-{uuid.uuid4().hex}.snappy.parquet", ids[order], emb, probs, tier,
                    model_name, model_version, row_group_bytes)
    _lap(seconds, "task_write_s", clock)
    return {**stats, **seconds}


def write_published(path: str, user_ids: np.ndarray, emb: np.ndarray, probs: np.ndarray, tier: np.ndarray,
                    model_name: str, model_version: str, row_group_bytes: int = 0) -> None:
    """One published Parquet file (the table's columns without ``dt``) of these rows, in row groups of
    about ``row_group_bytes`` (0: pyarrow's default), with statistics only where lookups prune."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(_published_arrays(user_ids, emb, probs, tier, (model_name, model_version)),
                     names=list(_FILE_COLUMNS))
    n = len(user_ids)
    rows_per_group = max(1024, int(row_group_bytes * n / max(1, table.nbytes))) if row_group_bytes else None
    pq.write_table(table, path, row_group_size=rows_per_group, use_dictionary=["model_name", "model_version"],
                   write_statistics=["user_id", "ppp_tier"])


def _lap(seconds: dict[str, float], phase: str, since: float) -> float:
    """Adds the time since ``since`` to ``seconds[phase]``; returns now."""
    now = time.perf_counter()
    seconds[phase] += now - since
    return now


# a scoring task's seconds: reading and decoding its rows into tensors (with the model's first load), the
# forward passes (with placing their outputs), and the checks, the output table and its Parquet write
TASK_PHASES = ("task_read_s", "task_forward_s", "task_write_s")


MAX_UNIT_USERS = 1 << 17  # a task's output file is sorted in memory: files of more users are split by row groups


def plan_units(paths: list[str], tasks: int | None, max_users: int = MAX_UNIT_USERS) -> list[Unit]:
    """Which rows each task scores: runs of consecutive row groups of one file, of at most ``max_users``
    users and (to keep ``tasks`` tasks busy) at most 1/``tasks`` of all users, unless one row group holds
    more. Reads the files' footers only."""
    import pyarrow.parquet as pq

    metas = [pq.ParquetFile(p).metadata for p in paths]
    total = sum(m.num_rows for m in metas)
    target = max(1, min(max_users, math.ceil(total / tasks) if tasks else max_users))
    units: list[Unit] = []
    for path, meta in zip(paths, metas):
        groups: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups and rows + n > target:
                units.append((len(units), path, groups))
                groups, rows = [], 0
            groups.append(g)
            rows += n
        if rows:
            units.append((len(units), path, groups))
    return units


def score_user_files(spark: "SparkSession", files: list[str], folder: str, state: bytes, model_name: str,
                     model_version: str, batch_size: int, forward_batch: int, tasks: int | None = None,
                     row_group_bytes: int = 0) -> dict[str, float]:
    """Score the users of local ``features/user_sequences`` Parquet ``files`` on Spark's executors, each
    task reading its file with pyarrow and writing its users' ``outputs/user_representations`` columns
    (without ``dt``) as one Parquet file in the local ``folder``: no JVM decoding or Arrow conversion of
    the sequences, and the checks come from the same pass (:func:`plan_units` says which task scores
    what). Returns :func:`check_representations`'s aggregates but ``users`` (the caller counts the
    distinct user_ids of the written files).

    Raises:
        PlatformError: a file is not a local path.
    """
    from features.representations import local_paths

    paths = local_paths(files)
    if paths is None:
        raise PlatformError(f"scoring from files needs local Parquet files, got {files[:1]}: use the Spark path "
                            f"(score_users)")
    units = plan_units(paths, tasks)
    if not units:
        return {"rows": 0.0}
    bstate, key = spark.sparkContext.broadcast(state), uuid.uuid4().hex

    def run(part: Iterable[Unit]) -> Iterator[dict[str, Any]]:
        for unit in part:
            yield _score_unit(unit, bstate, key, folder, model_name, model_version, batch_size, forward_batch,
                              row_group_bytes)

    sc = spark.sparkContext
    sc.setJobGroup(key, f"nightly job: scoring {len(units)} unit(s) of sequence files", interruptOnCancel=True)
    try:
        with _task_progress(sc, key, len(units)):
            parts = sc.parallelize(units, len(units)).mapPartitions(run).collect()  # one small dict per unit
    finally:
        for prop in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(prop, None)  # type: ignore[arg-type]  # None removes it
    return _merge_stats(parts)


@contextlib.contextmanager
def _task_progress(sc: Any, group: str, total: int, every_s: float = 10.0) -> Iterator[None]:
    """Report the finished tasks of Spark job group ``group`` (of ``total``) while the block runs: a bar
    on a terminal, a log line with rate and ETA every ``every_s`` seconds elsewhere."""
    from training.progress import Progress

    progress = Progress("nightly job: scoring", total, unit="tasks", every_s=every_s)
    done = threading.Event()

    def sync() -> None:
        tracker = sc.statusTracker()
        finished = 0
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in (info.stageIds if info else []):
                st = tracker.getStageInfo(stage)
                finished += st.numCompletedTasks if st else 0
        for _ in range(max(0, min(finished, total) - progress.steps)):
            progress.update(1)

    def watch() -> None:
        while not done.wait(1.0):
            sync()

    thread = threading.Thread(target=watch, name="publish-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        sync()
        progress.close()
        progress.log.info("%s", progress.describe())


def publish_from_files(tables: "DeltaTables", cfg: "PublishConfig", files: list[str], state: bytes, name: str,
                       version: str, ds: str, population: int, dim: int, metadata: dict[str, Any],
                       timings: dict[str, float] | None = None) -> "WriteResult":
    """Replace partition ``ds`` of ``outputs/user_representations`` with the users of the local sequence
    ``files`` scored by :func:`score_user_files`, in one commit. The checks come from the scoring pass;
    user_id's uniqueness across files from a merge of the written files' sorted user_id columns
    (:func:`features.representations.repeated_ids`, bounded memory). ``timings``, when
    given, receives the seconds of ``score`` (the scoring tasks) and ``unique`` (that check).

    Raises:
        DataQualityError: a check failed; nothing is committed.
    """
    from features.representations import local_paths, repeated_ids

    def stage(folder: str) -> dict[str, Any]:
        target = (local_paths([f"{folder}/dt={ds}"]) or [""])[0]
        started = time.perf_counter()
        stats = score_user_files(tables.spark, files, target, state, name, version, cfg.batch_size,
                                 cfg.forward_batch, cfg.partitions, t.USER_REPRESENTATIONS.row_group_bytes)
        scored = time.perf_counter()
        if stats.get("rows"):  # each task wrote its file sorted by user_id: one merge of their sorted runs
            written = sorted(str(p) for p in Path(target).glob("*.parquet"))
            stats["users"] = stats["rows"] - repeated_ids(written)
        if timings is not None:
            timings.update(score=scored - started, unique=time.perf_counter() - scored,
                           **{k: stats.get(k, 0.0) for k in TASK_PHASES})
        logging.getLogger("training.progress").info(  # shown like every progress line
            "nightly job: scored %s users in %.1f s (%s users/s; the tasks' seconds: read %.1f, forward %.1f, "
            "write %.1f); user_id's uniqueness checked in %.1f s",
            f"{stats.get('rows', 0):,.0f}", scored - started,
            f"{stats.get('rows', 0) / max(scored - started, 1e-9):,.0f}",
            *(stats.get(k, 0.0) for k in TASK_PHASES), time.perf_counter() - scored)
        return {"rows": int(refuse_bad(stats, population, dim)["rows"])}

    return tables.replace_partition_files(t.USER_REPRESENTATIONS, ds, stage, metadata)


def representation_problems(stats: dict[str, float], expected_users: int, dim: int) -> list[str]:
    """What is wrong with a scored partition, from :func:`check_representations`'s aggregates."""
    problems = []
    if stats.get("rows") != expected_users:
        problems.append(f"{stats.get('rows'):.0f} rows for a serving population of {expected_users}")
    if stats.get("users", stats.get("rows")) != stats.get("rows"):
        problems.append(f"user_id not unique ({stats.get('users'):.0f} users in {stats.get('rows'):.0f} rows)")
    if stats.get("nulls"):
        problems.append(f"{stats['nulls']:.0f} rows with nulls")
    if stats.get("non_finite"):
        problems.append(f"{stats['non_finite']:.0f} rows with NaN/Inf values")
    if expected_users and (stats.get("min_dim") != dim or stats.get("max_dim") != dim):
        problems.append(f"embedding length {stats.get('min_dim'):.0f}..{stats.get('max_dim'):.0f}, expected {dim}")
    if stats.get("bad_prob_len"):
        problems.append(f"{stats['bad_prob_len']:.0f} rows without 7 tier probabilities")
    if expected_users and not stats.get("max_prob_sum_error", math.nan) <= 1e-4:
        problems.append(f"tier probabilities sum off by up to {stats.get('max_prob_sum_error')}")
    if stats.get("bad_tier"):
        problems.append(f"{stats['bad_tier']:.0f} tiers outside 1..7")
    return problems


def check_representations(out: "DataFrame", expected_users: int, dim: int) -> dict[str, float]:
    """Aggregate checks of a scored partition (one pass, nothing row-sized collected).

    Raises:
        DataQualityError: naming every failed check, so the job refuses to commit.
    """
    from pyspark.sql import functions as F

    finite = lambda x: ~(F.isnan(x) | x.isNull() | (F.abs(x) == F.lit(float("inf"))))  # noqa: E731
    row = out.agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("users"),
        F.sum(F.when(F.col("embedding").isNull() | F.col("ppp_probs").isNull() | F.col("ppp_tier").isNull()
                     | F.col("user_id").isNull() | F.col("model_version").isNull(), 1).otherwise(0)).alias("nulls"),
        F.sum(F.when(~F.forall("embedding", finite) | ~F.forall("ppp_probs", finite), 1).otherwise(0))
        .alias("non_finite"),
        F.min(F.size("embedding")).alias("min_dim"), F.max(F.size("embedding")).alias("max_dim"),
        F.sum(F.when(F.size("ppp_probs") != 7, 1).otherwise(0)).alias("bad_prob_len"),
        F.max(F.abs(F.aggregate("ppp_probs", F.lit(0.0).cast("double"), lambda a, x: a + x) - 1.0))
        .alias("max_prob_sum_error"),
        F.sum(F.when((F.col("ppp_tier") < 1) | (F.col("ppp_tier") > 7), 1).otherwise(0)).alias("bad_tier"),
    ).first()
    stats = {k: float(v) if v is not None else math.nan for k, v in (row.asDict() if row else {}).items()}
    return refuse_bad(stats, expected_users, dim)


def refuse_bad(stats: dict[str, float], expected_users: int, dim: int) -> dict[str, float]:
    """``stats`` when a scored partition passes every check.

    Raises:
        DataQualityError: naming every failed check, so the job refuses to commit.
    """
    if not stats.get("rows"):
        raise DataQualityError(f"refusing to commit outputs/user_representations: no rows scored for a serving "
                               f"population of {expected_users}")
    problems = representation_problems(stats, expected_users, dim)
    if problems:
        raise DataQualityError("refusing to commit outputs/user_representations: " + "; ".join(problems))
    return stats
