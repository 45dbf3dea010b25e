"""Reading the published representation table: lookups, similarity search, tier distributions.

The exact similarity search and SQL run on Spark against one snapshot of
``outputs/user_representations``; only bounded results (one user, the top k, seven tier counts) reach
the driver. Similarity search weighs the blocks of the vector equally when the nightly job recorded
them (:func:`similar`). The nightly job also builds a nearest-neighbour index of each date it
publishes (:func:`index_plan`, :func:`build_index`, :mod:`features.vector_index`), which
:func:`indexed_similar` searches without Spark.
A lookup and the tier counts also run without Spark (:func:`lookup_files`, :func:`tier_counts_files`):
Arrow reads the snapshot's Parquet files, listed by the Delta engine, pruning row groups by their
``user_id`` statistics and reading only the columns asked for, so an interactive lookup does not pay
for a Spark start-up.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from core import tables as t
from core.errors import PlatformError, TableNotFound

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from core.config import IndexConfig
    from core.delta import Commit, DeltaTables

SPEC = t.USER_REPRESENTATIONS
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One date of the table at one table version."""

    version: int
    day: str
    frame: "DataFrame"


def snapshot(tables: "DeltaTables", day: str | None = None, version: int | None = None) -> Snapshot:
    """The partition ``day`` (default: the latest) of table version ``version`` (default: latest).

    Raises:
        TableNotFound: the table, version or date does not exist (one line, with what exists).
    """
    v, d = resolve(tables, day, version)
    return Snapshot(v, d, tables.read(SPEC, dt=d, version=v))


def resolve(tables: "DeltaTables", day: str | None = None, version: int | None = None) -> tuple[int, str]:
    """(table version, date) of :func:`snapshot`, from the Delta log and file list alone (no Spark).

    Raises:
        TableNotFound: the table, version or date does not exist (one line, with what exists).
    """
    if not tables.exists(SPEC):
        raise TableNotFound(f"{SPEC.name} does not exist yet; run jobs/publish_user_representations.py")
    latest = tables.version(SPEC)
    v = latest if version is None else version
    if v < 0 or v > latest:
        raise TableNotFound(f"{SPEC.name} has no version {v} (versions 0..{latest})")
    days = tables.partitions(SPEC, v)
    if not days:
        raise TableNotFound(f"{SPEC.name} version {v} has no partition")
    d = days[-1] if day is None else day
    if d not in days:
        raise TableNotFound(f"{SPEC.name} version {v} has no date {d} (dates: {days[0]}..{days[-1]})")
    return v, d


def lookup(snap: Snapshot, user_id: int) -> dict[str, Any]:
    """One user's row of the snapshot, on Spark."""
    rows = snap.frame.where(snap.frame.user_id == user_id).limit(2).collect()
    return _user_record(rows[0].asDict() if rows else None, user_id, snap.version, snap.day)


USER_COLUMNS = ("user_id", "embedding", "ppp_tier", "ppp_probs", "model_name", "model_version")


def local_paths(files: list[str]) -> list[str] | None:
    """Plain paths of ``file://`` snapshot files, or None when one is elsewhere (an object store, HDFS:
    read it through Spark, which has the file system's configuration)."""
    from urllib.parse import unquote, urlparse

    parsed = [urlparse(f) for f in files]
    if any(p.scheme not in ("", "file") for p in parsed):
        return None
    return [unquote(p.path) for p in parsed]


def repeated_ids(paths: list[str], column: str = "user_id", buffered: int = 1 << 22) -> int:
    """How many rows of the Parquet ``paths`` repeat a ``column`` value of an earlier row (0: unique), for
    files each sorted by that column (the nightly job's output files): a k-way merge of the files' sorted
    runs, read in chunks, holding at most about ``buffered`` values whatever the number of rows.

    Each round takes, from every file's buffered chunk, the values up to the smallest of the chunks' last
    values (no file can hold a smaller one later), sorts them and counts equal neighbours; a value that
    ends one round and starts the next is counted too.

    Raises:
        PlatformError: a file is not sorted by ``column`` (naming it), or the column has nulls.
    """
    import numpy as np
    import pyarrow.parquet as pq

    chunk = max(1024, buffered // max(1, len(paths)))
    readers = [(p, pq.ParquetFile(p).iter_batches(batch_size=chunk, columns=[column])) for p in paths]
    buffers: dict[str, Any] = {}
    ends: dict[str, Any] = {}  # each file's last value read so far: its next chunk must not start below it

    def refill(path: str, batches: Any) -> None:
        while not len(buffers.get(path, ())):
            batch = next(batches, None)
            if batch is None:
                buffers.pop(path, None)
                return
            col = batch.column(0)
            if col.null_count:
                raise PlatformError(f"{path}: column '{column}' has nulls")
            values = col.to_numpy()
            if len(values) and ((path in ends and values[0] < ends[path]) or (np.diff(values) < 0).any()):
                raise PlatformError(f"{path} is not sorted by '{column}': repeated_ids needs files sorted by it "
                                    f"(count the distinct values with Spark instead)")
            if len(values):
                ends[path] = values[-1]
            buffers[path] = values

    repeats, last = 0, None
    while True:
        for path, batches in readers:
            refill(path, batches)
        if not buffers:
            return repeats
        cutoff = min(v[-1] for v in buffers.values())
        taken = []
        for path, values in list(buffers.items()):
            cut = int(np.searchsorted(values, cutoff, side="right"))
            taken.append(values[:cut])
            buffers[path] = values[cut:]
        merged = np.sort(np.concatenate(taken), kind="stable")
        repeats += int((merged[1:] == merged[:-1]).sum()) + int(last is not None and merged[0] == last)
        last = merged[-1]


def _arrow_table(paths: list[str], columns: list[str], users: list[int] | None = None) -> Any:
    """``columns`` of the Parquet ``paths`` (of ``users`` only: row groups whose ``user_id`` range misses
    them are not read)."""
    import pyarrow.dataset as pads

    if not paths or users == []:
        import pyarrow as pa

        return pa.table({c: [] for c in columns})
    data = pads.dataset(paths, format="parquet")
    key = pads.field("user_id")
    where = None if users is None else key == users[0] if len(users) == 1 else key.isin(users)
    return data.to_table(columns=columns, filter=where)


def lookup_files(paths: list[str], user_id: int, version: int, day: str) -> dict[str, Any]:
    """:func:`lookup` without Spark: one user's row from the snapshot's local Parquet ``paths``
    (:func:`local_paths`), reading only the row groups whose ``user_id`` range holds it."""
    rows = _arrow_table(paths, list(USER_COLUMNS), [user_id]).slice(0, 1).to_pylist()
    return _user_record(rows[0] if rows else None, user_id, version, day)


def _user_record(r: dict[str, Any] | None, user_id: int, version: int, day: str) -> dict[str, Any]:
    if r is None:
        raise PlatformError(f"user {user_id} is not in {SPEC.name} dt={day} (version {version})")
    vec = [float(x) for x in r["embedding"]]
    return {"user_id": r["user_id"], "dt": day, "table_version": version, "ppp_tier": r["ppp_tier"],
            "ppp_probs": [round(float(p), 6) for p in r["ppp_probs"]], "model_name": r["model_name"],
            "model_version": r["model_version"], "dim": len(vec), "norm": math.sqrt(sum(x * x for x in vec)),
            "embedding": vec}


MEASURES = ("balanced", "cosine")


@dataclass(frozen=True)
class Neighbours:
    """The result of :func:`similar`.

    Attributes:
        measure: ``balanced`` (the mean over the vector's blocks of each block's cosine) or ``cosine``
            (the cosine of the whole vectors).
        blocks: the names of the blocks the balanced measure averages over; () for ``cosine``.
        layout_version: the table version whose commit recorded the layout used; None for ``cosine``.
        rows: the neighbours, nearest first: ``user_id``, ``cosine`` (the similarity under ``measure``),
            ``ppp_tier``.
        method: ``exact`` (every vector scored, on Spark) or ``index`` (:func:`indexed_similar`).
        index: for ``index``: its kind, lists, lists scanned, rows, path and the commit that recorded it.
    """

    measure: str
    blocks: tuple[str, ...]
    layout_version: int | None
    rows: list[dict[str, Any]]
    method: str = "exact"
    index: dict[str, Any] | None = None


def recorded_layout(tables: "DeltaTables", snap: Snapshot) -> tuple[Any, int] | None:
    """The ``layout`` metadata (see :func:`training.layout.layout_metadata`) and version of the commit
    that wrote the snapshot's partition: the newest commit at or before ``snap.version`` whose metadata
    ``dt`` is ``snap.day`` (the nightly job replaces one date per commit, so a later commit may be for
    another date and another model). None when that commit records no layout (a model whose vector
    has no blocks, or written before layouts were recorded) or is no longer in the table's history."""
    commit = partition_commit(tables, snap.version, snap.day)
    layout = None if commit is None else commit.metadata.get("layout")
    return None if layout is None or commit is None else (layout, commit.version)


def similar(tables: "DeltaTables", snap: Snapshot, user_id: int, k: int, measure: str | None = None) -> Neighbours:
    """Exact top-``k`` users most similar to ``user_id`` (computed on the executors).

    A published vector is blocks of very different norm (the dense part, the attention heads'
    interests, the behaviour prices: :func:`training.layout.published_layout`), so the whole-vector
    cosine is driven by the largest block and all but ignores the interests
    (``benchmarks/results/neighbours.md``). ``balanced`` scores each other user by the mean over the
    blocks of the cosine of the two users' sub-vectors of that block, so every block weighs the same;
    the blocks are the layout the nightly job recorded in the commit that wrote the partition
    (:func:`recorded_layout`).

    Args:
        measure: ``balanced``, ``cosine`` (the whole vectors), or None: ``balanced`` when the partition
            has a recorded layout, else ``cosine``.

    Raises:
        PlatformError: ``user_id`` is not in the snapshot; an unknown measure; ``balanced`` asked for a
            partition without a recorded layout; a recorded layout that does not fit the vectors.
    """
    from pyspark.sql import functions as F

    from training.layout import blocks_from_metadata, runs

    if measure is not None and measure not in MEASURES:
        raise PlatformError(f"unknown similarity measure {measure!r}: use one of {', '.join(MEASURES)}")
    target = lookup(snap, user_id)["embedding"]
    found = recorded_layout(tables, snap) if measure != "cosine" else None
    where = f"{SPEC.name} dt={snap.day} (version {snap.version})"
    if measure == "balanced" and found is None:
        raise PlatformError(f"{where} has no recorded layout (its model's vector has no blocks, or the commit "
                            f"that wrote it predates layouts or left the history): use --measure cosine")
    if found is None:
        blocks: list[tuple[str, list[tuple[int, int]]]] = [("whole", [(0, len(target) - 1)])]
        used, layout_version = "cosine", None
    else:
        try:
            recorded = blocks_from_metadata(found[0], len(target))
        except PlatformError as exc:
            raise PlatformError(f"{where}: {exc} (commit v{found[1]}); use --measure cosine") from None
        blocks = [(b.key, runs(b.columns)) for b in recorded]
        used, layout_version = "balanced", found[1]
    zero = F.lit(0.0).cast("double")

    def block_cosine(spans: list[tuple[int, int]]) -> "Column":
        """The cosine of every row's and the target's sub-vectors made of ``spans`` (first, last)."""
        dots, squares, tsq = [], [], 0.0
        for first, last in spans:
            part = F.slice("embedding", first + 1, last - first + 1)  # 1-based start, length
            tpart = [float(x) for x in target[first:last + 1]]
            dots.append(F.aggregate(F.zip_with(part, F.array(*[F.lit(x) for x in tpart]), lambda a, b: a * b),
                                    zero, lambda acc, x: acc + x))
            squares.append(F.aggregate(part, zero, lambda acc, x: acc + x.cast("double") * x.cast("double")))
            tsq += sum(x * x for x in tpart)
        dot, sq = dots[0], squares[0]
        for d, q in zip(dots[1:], squares[1:]):
            dot, sq = dot + d, sq + q
        return dot / (F.greatest(F.sqrt(sq), F.lit(1e-12)) * max(math.sqrt(tsq), 1e-12))

    score = block_cosine(blocks[0][1])
    for _, spans in blocks[1:]:
        score = score + block_cosine(spans)
    score = score / len(blocks)
    scored = (snap.frame.where(F.col("user_id") != user_id)
              .select("user_id", "ppp_tier", score.alias("cosine")))
    top = scored.orderBy(F.col("cosine").desc(), F.col("user_id")).limit(k).collect()  # k rows
    return Neighbours(used, tuple(name for name, _ in blocks) if used == "balanced" else (), layout_version,
                      [{"user_id": r.user_id, "cosine": float(r.cosine), "ppp_tier": r.ppp_tier} for r in top])


def index_plan(tables: "DeltaTables", day: str, run_id: str, enabled: bool) -> dict[str, Any]:
    """The ``index`` commit metadata of a publish run: where the run will build the partition's
    nearest-neighbour index (:mod:`features.vector_index`), relative to the table; {} when disabled
    or when the lake is not on the local file system (``similar`` then runs the exact scan)."""
    from urllib.parse import urlparse

    from features.vector_index import KIND, relative_path

    if not enabled or urlparse(tables.uri(SPEC)).scheme not in ("", "file"):
        return {}
    return {"index": {"path": relative_path(day, run_id), "kind": KIND}}


def index_dir(tables: "DeltaTables", relative: str) -> str:
    """The local folder of an index recorded as ``relative`` in a commit."""
    from urllib.parse import unquote, urlparse

    return os.path.join(unquote(urlparse(tables.uri(SPEC)).path), relative)


def build_index(tables: "DeltaTables", version: int, day: str, relative: str, blocks: Any,
                cfg: "IndexConfig") -> str:
    """Build the index of partition ``day`` as committed in ``version`` at the ``relative`` path its
    commit recorded (:func:`index_plan`), then remove the date's earlier indexes
    (:func:`features.vector_index.prune_siblings`); returns a summary line.

    Args:
        blocks: per block its column runs (the balanced measure), or None (whole-vector cosine).
    """
    from features import vector_index as vi

    paths = local_paths(tables.files(SPEC, dt=day, version=version))
    if paths is None:
        raise PlatformError(f"{SPEC.name} dt={day} v{version} has files outside the local file system: "
                            f"its vector index cannot be built here")
    out = vi.build(paths, index_dir(tables, relative), blocks, nlist=cfg.nlist, nprobe=cfg.nprobe,
                   train_rows=cfg.train_rows, about={"dt": day, "table_version": version})
    gone = vi.prune_siblings(out.path)
    m = out.manifest
    return (f"vector index: {m['rows']:,} users, {m['nlist']} lists ({m['measure']}), built in {m['build_s']:.1f} s "
            f"at {SPEC.name}/{relative}" + (f"; removed {len(gone)} earlier index(es) of dt={day}" if gone else ""))


def indexed_similar(tables: "DeltaTables", version: int, day: str, user_id: int, k: int,
                    measure: str | None = None, nprobe: int | None = None) -> Neighbours | None:
    """:func:`similar` through the partition's nearest-neighbour index, without Spark: the user's vector
    from the snapshot's files (Arrow), the ``k`` nearest from the index, their tiers from the files.

    Returns None when the exact scan must answer instead: the files are not local, the commit that
    wrote the partition recorded no index (or left the history), the index is not (yet) on disk, or
    it was built for another measure than the one asked for.
    """
    from features import vector_index as vi

    paths = local_paths(tables.files(SPEC, dt=day, version=version))
    commit = partition_commit(tables, version, day)
    if paths is None or commit is None:
        return None
    recorded = commit.metadata.get("index")
    if not isinstance(recorded, dict) or not recorded.get("path"):
        return None
    try:
        index = vi.open_index(index_dir(tables, str(recorded["path"])))
    except PlatformError:
        logger.warning("%s dt=%s: the index recorded by commit v%d is not on disk; running the exact scan",
                       SPEC.name, day, commit.version)
        return None
    used = index.manifest["measure"]
    if measure is not None and measure != used:
        return None
    target = lookup_files(paths, user_id, version, day)["embedding"]
    if len(target) != index.manifest["dim"]:
        raise PlatformError(f"{SPEC.name} dt={day}: the vector index at {index.path} holds {index.manifest['dim']} "
                            f"floats per user, the table {len(target)}: rebuild it or use --exact")
    found = index.search(target, k, exclude=user_id, nprobe=nprobe)
    got = _arrow_table(paths, ["user_id", "ppp_tier"], [u for u, _ in found])
    tiers = dict(zip(got.column("user_id").to_pylist(), got.column("ppp_tier").to_pylist()))
    balanced = used == "balanced"
    blocks = tuple(str(b.get("block")) for b in (commit.metadata.get("layout") or [])) if balanced else ()
    scanned = int(min(nprobe or index.manifest["nprobe"], index.manifest["nlist"]))
    return Neighbours(used, blocks, commit.version if balanced else None,
                      [{"user_id": u, "cosine": s, "ppp_tier": tiers.get(u)} for u, s in found], method="index",
                      index={**{key: index.manifest[key] for key in ("kind", "nlist", "rows")}, "nprobe": scanned,
                             "path": str(recorded["path"]), "commit_version": commit.version})


def partition_commit(tables: "DeltaTables", version: int, day: str) -> "Commit | None":
    """The newest commit at or before ``version`` that wrote partition ``day`` (None: left the history)."""
    for commit in tables.history(SPEC):  # newest first
        if commit.version <= version and commit.metadata.get("dt") == day:
            return commit
    return None


def tier_distribution(tables: "DeltaTables", snap: Snapshot) -> dict[str, Any]:
    """Counts and shares of ``ppp_tier`` on the snapshot's date and the previous published date (Spark)."""
    return _tiers(tables.partitions(SPEC, snap.version), snap.version, snap.day, lambda d: _counts(
        snap.frame if d == snap.day else tables.read(SPEC, dt=d, version=snap.version)))


def tier_counts_files(tables: "DeltaTables", version: int, day: str) -> dict[str, Any] | None:
    """:func:`tier_distribution` without Spark, reading the ``ppp_tier`` column of the local snapshot
    files; None when a file is not local (:func:`local_paths`)."""
    days = tables.partitions(SPEC, version)
    previous = [d for d in days if d < day]
    found = {d: local_paths(tables.files(SPEC, dt=d, version=version)) for d in [day, *previous[-1:]]}
    if any(paths is None for paths in found.values()):
        return None

    def counts(d: str) -> dict[int, int]:
        tiers = _arrow_table(found[d] or [], ["ppp_tier"]).column("ppp_tier").value_counts().to_pylist()
        return {int(x["values"]): int(x["counts"]) for x in tiers}

    return _tiers(days, version, day, counts)


def _tiers(days: list[str], version: int, day: str, counts: Callable[[str], dict[int, int]]) -> dict[str, Any]:
    previous = [d for d in days if d < day]
    out: dict[str, Any] = {"dt": day, "table_version": version,
                           "previous_dt": previous[-1] if previous else None, "tiers": []}
    now = counts(day)
    before = counts(previous[-1]) if previous else {}
    n_now, n_before = sum(now.values()), sum(before.values())
    for tier in range(1, 8):
        share = now.get(tier, 0) / n_now if n_now else 0.0
        row = {"tier": tier, "users": now.get(tier, 0), "share": share}
        if previous:
            prev_share = before.get(tier, 0) / n_before if n_before else 0.0
            row.update({"previous_users": before.get(tier, 0), "share_change_pp": 100 * (share - prev_share)})
        out["tiers"].append(row)
    out["users"] = n_now
    return out


def _counts(df: "DataFrame") -> dict[int, int]:
    return {int(r["ppp_tier"]): int(r["count"]) for r in df.groupBy("ppp_tier").count().collect()}  # <= 7 rows


def view_name(name: str) -> str:
    """``raw/events`` -> ``raw_events``; ``outputs/user_representations`` also as ``user_representations``."""
    return name.replace("/", "_")


def register_views(tables: "DeltaTables") -> list[str]:
    """Register every existing lake table as a temporary view for Spark SQL; returns the names."""
    from features.quality import quarantine_spec

    specs = [*t.RAW_TABLES, *t.TRUTH_TABLES, t.USER_SEQUENCES, t.USER_SEQUENCE_STATE, t.TRAINING_EXAMPLES,
             t.FEATURE_STATS, t.USER_REPRESENTATIONS, *[quarantine_spec(s) for s in t.RAW_TABLES]]
    names = []
    for spec in specs:
        if tables.exists(spec):
            df = tables.read(spec)
            df.createOrReplaceTempView(view_name(spec.name))
            names.append(view_name(spec.name))
            if spec is t.USER_REPRESENTATIONS:
                df.createOrReplaceTempView("user_representations")
                names.append("user_representations")
    return names
