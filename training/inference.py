"""Scoring users on Spark executors with the user part of a registered model, and the checks a
published result must pass before it is committed.

The driver loads the model once and broadcasts its state (spec + weights, tens of MB); each
executor's Python worker deserialises it **once per process** (a module-level cache keyed by
the broadcast) and runs the user part over Arrow record batches (``mapInArrow``): each fixed-length
array column becomes one tensor through its flat values buffer (:func:`arrow_to_batch`) and the
outputs go back as Arrow list arrays built from flat buffers, with no Python per row and no pandas
(:func:`_score_batches`). Nothing proportional to the number of users reaches the driver.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pandas as pd

from core import tables as t
from core.errors import DataQualityError, PlatformError

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa

    from pyspark import Broadcast
    from pyspark.sql import DataFrame
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
        out[name] = torch.from_numpy(np.ascontiguousarray(values.reshape(n, width).astype(dtype, copy=False)))
    return out


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
                         "ppp_tier": probs_np.argmax(axis=1).astype(np.int32) + 1})


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


_CACHE: dict[int, "nn.Module"] = {}  # the user part of any model family
_LOCK = threading.Lock()
LOADS = {"count": 0}  # how many times this process built a model (tests check "once per process")


def _user_part(state: "Broadcast[bytes]") -> "nn.Module":
    """The broadcast model's user part, built once per Python worker process."""
    key = state.id if hasattr(state, "id") else id(state)
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


def _score_batches(batches: Iterable["pa.RecordBatch"], state: "Broadcast[bytes]", model_name: str,
                   model_version: str, day: str) -> Iterator["pa.RecordBatch"]:
    """The user part over Arrow record batches -> ``outputs/user_representations`` record batches."""
    import pyarrow as pa
    import torch

    part = _user_part(state)
    schema = representation_schema()
    for batch in batches:
        n = batch.num_rows
        if not n:
            continue
        with torch.no_grad():
            rep, probs = part(arrow_to_batch(batch))
        probs_np = probs.numpy().astype(np.float32)
        yield pa.RecordBatch.from_arrays([
            batch.column("user_id"), _list_array(rep.numpy()),
            pa.array(probs_np.argmax(axis=1).astype(np.int32) + 1), _list_array(probs_np),
            *(pa.repeat(pa.scalar(v, pa.string()), n) for v in (model_name, model_version, day))], schema=schema)


def representation_schema() -> "pa.Schema":
    """``outputs/user_representations`` as an Arrow schema (what ``mapInArrow`` must yield)."""
    import pyarrow as pa

    f32 = pa.list_(pa.float32())
    return pa.schema([("user_id", pa.int64()), ("embedding", f32), ("ppp_tier", pa.int32()), ("ppp_probs", f32),
                      ("model_name", pa.string()), ("model_version", pa.string()), ("dt", pa.string())])


def score_users(sequences: "DataFrame", state: bytes, model_name: str, model_version: str, day: _dt.date,
                partitions: int | None = None, batch_size: int | None = None) -> "DataFrame":
    """``outputs/user_representations`` rows for every row of ``sequences`` (``features/user_sequences``).

    ``partitions``: spread the input over at least this many tasks; ``batch_size``: users per
    Arrow batch, i.e. per forward pass (``publish.batch_size``).
    """
    spark = sequences.sparkSession
    if batch_size:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    bstate = spark.sparkContext.broadcast(state)
    name, version, ds = model_name, model_version, day.isoformat()
    inputs = sequences.select("user_id", *USER_INPUTS)
    if partitions and inputs.rdd.getNumPartitions() < partitions:
        # spread a table of few files over the executors; a table already split as finely is not
        # shuffled (every row's sequence arrays would cross the network once more)
        inputs = inputs.repartition(partitions)

    def score(batches: Iterable["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        return _score_batches(batches, bstate, name, version, ds)

    return inputs.mapInArrow(score, t.USER_REPRESENTATIONS.schema)


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
    if not stats.get("rows"):
        raise DataQualityError(f"refusing to commit outputs/user_representations: no rows scored for a serving "
                               f"population of {expected_users}")
    problems = []
    if stats.get("rows") != expected_users:
        problems.append(f"{stats.get('rows'):.0f} rows for a serving population of {expected_users}")
    if stats.get("users") != stats.get("rows"):
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
    if problems:
        raise DataQualityError("refusing to commit outputs/user_representations: " + "; ".join(problems))
    return stats
