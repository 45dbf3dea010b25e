"""One Delta table interface, two engines.

* ``rs`` (embedded default): executors write Parquet files into a staging folder inside the
  table; the driver moves them into their partition folders and commits them in one delta-rs
  transaction (``create_write_transaction``). Nothing row-sized passes through the driver.
  Reads list a snapshot's files with delta-rs and let Spark read them.
* ``spark``: delta-spark (``format("delta")``), for clusters with the Delta jars.

Both produce standard Delta tables; commit metadata goes to ``commitInfo.userMetadata`` as
a JSON string in both engines, so either engine (and any Delta reader) sees it.
"""
from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator, Literal, Mapping, Sequence, cast
from urllib.parse import unquote, urlparse

from core import faults, leases
from core.errors import PlatformError, SchemaError, TableNotFound
from core.tables import TableSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
    from pyspark.sql import types as T

    from core.config import Config

logger = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]
DtFilter = str | Sequence[str] | None
# partition column -> the value (or values) whose partitions a write replaces
Replace = Mapping[str, str | Sequence[str]]


@dataclass(frozen=True)
class Commit:
    """One entry of a table's history."""

    version: int
    timestamp: _dt.datetime
    operation: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    files: int
    rows: int | None

    def describe(self) -> str:
        rows = "?" if self.rows is None else f"{self.rows:,}"
        return f"{self.table} v{self.version} ({rows} rows, {self.files} files)"


@dataclass(frozen=True)
class CleanResult:
    """What :meth:`DeltaTables.clean_uncommitted` found (and removed unless a dry run)."""

    table: str
    staging_folders: tuple[str, ...]
    uncommitted_files: tuple[str, ...]
    kept_recent: int
    dry_run: bool

    def describe(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{self.table}: {verb} {len(self.staging_folders)} staging folder(s) and "
                f"{len(self.uncommitted_files)} uncommitted file(s); "
                f"{self.kept_recent} younger than the minimum age kept")


def resolve_root(lake_root: str) -> str:
    """Absolute lake root: local paths are made absolute, URIs (s3a://, hdfs://) kept."""
    if "://" in lake_root:
        return lake_root.rstrip("/")
    return os.path.abspath(lake_root)


def _dt_list(dt: DtFilter) -> list[str] | None:
    if dt is None:
        return None
    return [dt] if isinstance(dt, str) else list(dt)


class DeltaTables(abc.ABC):
    """Reads and writes the lake's Delta tables as Spark DataFrames."""

    engine: str = ""

    def __init__(self, spark: "SparkSession", lake_root: str, storage_options: dict[str, str] | None = None):
        self.spark = spark
        self.root = resolve_root(lake_root)
        self.storage_options = dict(storage_options or {})

    def uri(self, spec: TableSpec) -> str:
        return f"{self.root}/{spec.name}"

    # ------------------------------------------------------------------ abstract engine API
    @abc.abstractmethod
    def exists(self, spec: TableSpec) -> bool:
        """True when the table has at least one commit."""

    @abc.abstractmethod
    def version(self, spec: TableSpec) -> int:
        """Latest version of the table."""

    @abc.abstractmethod
    def history(self, spec: TableSpec, limit: int | None = None) -> list[Commit]:
        """Commits, newest first."""

    @abc.abstractmethod
    def files(self, spec: TableSpec, dt: DtFilter = None, version: int | None = None) -> list[str]:
        """``file://``/URI paths of the Parquet files of a snapshot (optionally only some ``dt``)."""

    @abc.abstractmethod
    def schema(self, spec: TableSpec, version: int | None = None) -> "T.StructType":
        """The schema stored in the table's log (not the spec's)."""

    def table_names(self, max_depth: int = 3) -> list[str]:
        """Names (paths under the lake root) of the Delta tables in the lake: folders holding a
        ``_delta_log``, at most ``max_depth`` levels down."""
        fs = _HadoopFs(self.spark, self.root)
        root = fs.qualify(self.root)
        found: list[str] = []

        def walk(path: str, depth: int) -> None:
            subdirs = [d for d, _ in fs.list_dirs(path, newest=False)]
            if any(d.rsplit("/", 1)[-1] == "_delta_log" for d in subdirs):
                found.append(path[len(root) + 1:])
                return
            if depth < max_depth:
                for d in subdirs:
                    name = d.rsplit("/", 1)[-1]
                    if name not in ("_delta_log", "_staging") and not name.startswith(".") and "=" not in name:
                        walk(d, depth + 1)

        walk(root, 0)
        return sorted(found)

    def clean_uncommitted(self, spec: TableSpec, min_age_s: float = 86_400, dry_run: bool = False) -> CleanResult:
        """Remove what killed writes left in the table's folder: staging folders, and Parquet files that
        no version of the table references (a write killed between moving its files into the
        partition folders and its commit). Delta readers never see them; plain Parquet readers of a
        partition folder would. Anything younger than ``min_age_s`` is kept: it may belong to a
        write still running. Files of older versions stay (time travel)."""
        raise PlatformError(f"delta.engine={self.engine} has no cleanup of uncommitted files; use the engine's "
                            f"VACUUM with a retention period")

    @abc.abstractmethod
    def _read(self, spec: TableSpec, dts: list[str] | None, version: int | None) -> "DataFrame":
        ...

    @abc.abstractmethod
    def _write(self, df: "DataFrame", spec: TableSpec, mode: WriteMode, replace: dict[str, list[str]] | None,
               metadata: dict[str, Any]) -> WriteResult:
        ...

    # ------------------------------------------------------------------ shared behaviour
    def read(self, spec: TableSpec, dt: DtFilter = None, version: int | None = None) -> "DataFrame":
        """The table (or some ``dt`` partitions, or an older ``version``) as a DataFrame.

        Raises:
            TableNotFound: the table or the requested version does not exist.
        """
        if not self.exists(spec):
            raise TableNotFound(f"table {spec.name} does not exist under {self.root}; run the job that writes it")
        if version is not None:
            latest = self.version(spec)
            if version < 0 or version > latest:
                raise TableNotFound(f"table {spec.name} has no version {version} (latest is {latest})")
        dts = _dt_list(dt)
        if dts is not None and "dt" not in spec.partition_by:
            raise PlatformError(f"table {spec.name} is not partitioned by dt")
        spec.validate(self.schema(spec, version))
        return self._read(spec, dts, version).select(spec.columns)

    def write(self, df: "DataFrame", spec: TableSpec, mode: WriteMode = "append", *,
              replace: Replace | None = None, metadata: dict[str, Any] | None = None) -> WriteResult:
        """Write ``df`` (conformed to ``spec``) in one atomic commit.

        Args:
            mode: ``append``; or ``overwrite``: the whole table, or with ``replace`` exactly the
                partitions it names (replace-where), e.g. ``{"dt": "2026-11-14"}`` or
                ``{"dt": [...days]}``. Rows outside those partitions make the write fail.
            metadata: JSON-able commit metadata (job, run id, input versions, ...).
        """
        norm: dict[str, list[str]] | None = None
        if replace is not None:
            norm = {k: [v] if isinstance(v, str) else list(v) for k, v in replace.items()}
            bad = [k for k in norm if k not in spec.partition_by]
            if bad or not norm:
                raise PlatformError(f"table {spec.name} is not partitioned by {', '.join(bad) or '?'}; "
                                    f"cannot replace a partition")
            mode = "overwrite"
        if mode not in ("append", "overwrite"):
            raise PlatformError(f"unknown write mode {mode!r} (append or overwrite)")
        self._check_writable(spec)
        conformed = spec.conform(df)
        if spec.lookup_key:  # each file sorted by the key: row-group statistics then prune point lookups
            # (the partition columns first: a partitioned write sorts by them, which would undo a sort by the key)
            conformed = conformed.sortWithinPartitions(*spec.partition_by, spec.lookup_key)
        meta = {"engine": self.engine, **(metadata or {})}
        with self._storage_errors_in_one_line(spec):
            result = self._write(conformed, spec, mode, norm, meta)
        logger.info("wrote %s", result.describe())
        faults.point("write.committed")
        return result

    @contextlib.contextmanager
    def _storage_errors_in_one_line(self, spec: TableSpec) -> Iterator[None]:
        """A storage failure while writing ``spec`` becomes one line naming the table and the fix."""
        try:
            yield
        except PlatformError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage failures become one line naming the table
            if not _is_storage_failure(exc):
                raise
            raise PlatformError(
                f"writing table {spec.name} at {self.uri(spec)} failed, nothing was committed: {storage_cause(exc)}; "
                f"check that lake_root ({self.root}) is writable and has free space") from exc

    def _check_writable(self, spec: TableSpec) -> None:
        """Fail before any work when a local table folder cannot be written: a file where the
        folder should be, or a read-only location (object stores are left to the write itself)."""
        path = _plain_path(self.uri(spec))
        if "://" in path:
            return
        existing = path  # the table folder, or its nearest existing ancestor
        while not os.path.exists(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            existing = parent
        if not os.path.isdir(existing):
            raise PlatformError(f"table {spec.name}: {existing} is a file, not a folder; "
                                f"move it away or set lake_root to another folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PlatformError(f"table {spec.name}: {existing} is not writable (read-only file system or "
                                f"permissions); fix its permissions or set lake_root to a writable folder")

    def lease(self, spec: TableSpec, dts: str | Sequence[str], job: str, run_id: str) -> ContextManager[None]:
        """Hold the write leases of partitions ``dts`` of ``spec`` (:mod:`core.leases`): a second run
        that wants one of them is refused at once, naming this one. A local lake root must exist: a
        missing one (a wrong path, an unmounted volume) is refused rather than created."""
        if "://" not in self.root and not os.path.isdir(self.root):
            raise PlatformError(f"lake_root {self.root} does not exist (a wrong path or an unmounted volume?): "
                                f"fix lake_root, or create the folder and load the input tables into it")
        return leases.lease(_plain_path(self.uri(spec)), spec.name, [dts] if isinstance(dts, str) else dts,
                            job, run_id)

    def replace_partition(self, df: "DataFrame", spec: TableSpec, dt: str,
                          metadata: dict[str, Any] | None = None) -> WriteResult:
        """Atomically replace exactly partition ``dt`` of ``spec`` with ``df``."""
        return self.write(df, spec, "overwrite", replace={"dt": dt}, metadata=metadata)

    def replace_partition_files(self, spec: TableSpec, dt: str, stage: Callable[[str], Mapping[str, Any]],
                                metadata: dict[str, Any] | None = None) -> WriteResult:
        """Atomically replace exactly partition ``dt`` of ``spec`` with the Parquet files that
        ``stage(folder)`` writes under ``folder/dt=<dt>/`` (e.g. Spark tasks writing one file each
        with pyarrow; nothing row-sized passes through the driver). The files hold ``spec``'s columns
        without the partition column. ``stage`` returns more commit metadata; when it raises (a failed
        check), nothing is committed and its files are removed."""
        self._check_writable(spec)
        self._check_schema(spec)
        staging = f"{self.uri(spec)}/_staging/{uuid.uuid4().hex}"
        fs = _HadoopFs(self.spark, staging)
        try:
            extra = stage(staging)
            meta = {"engine": self.engine, **(metadata or {}), **extra}
            with self._storage_errors_in_one_line(spec):
                result = self._commit_staged(spec, staging, fs, "overwrite", {"dt": [dt]}, meta)
        finally:
            fs.delete(staging)
        logger.info("wrote %s", result.describe())
        faults.point("write.committed")
        return result

    def _check_schema(self, spec: TableSpec) -> None:
        """Fail before any work when the table exists with another schema (engines that can tell)."""

    @abc.abstractmethod
    def _commit_staged(self, spec: TableSpec, staging: str, fs: "_HadoopFs", mode: WriteMode,
                       replace: dict[str, list[str]] | None, metadata: dict[str, Any]) -> WriteResult:
        """Commit the Parquet files under ``staging`` (partition folders inside) in one transaction."""

    def partitions(self, spec: TableSpec, version: int | None = None) -> list[str]:
        """Sorted ``dt`` values present in a snapshot (from the file list, no data scan)."""
        out = set()
        for f in self.files(spec, version=version):
            for part in f.split("/"):
                if part.startswith("dt="):
                    out.add(unquote(part[3:]))
        return sorted(out)

    def metadata(self, spec: TableSpec, version: int) -> dict[str, Any]:
        """User metadata of the commit that made ``version``."""
        for commit in self.history(spec):
            if commit.version == version:
                return commit.metadata
        raise TableNotFound(f"table {spec.name} has no version {version}")

    def last_metadata(self, spec: TableSpec) -> dict[str, Any]:
        """User metadata of the newest commit."""
        hist = self.history(spec, limit=1)
        return hist[0].metadata if hist else {}


_DELTA_RS_ERRORS = ("DeltaError", "CommitFailedError", "DeltaProtocolError")
_JAVA_STORAGE = re.compile(r"java\.(io|nio\.file)\.\w*Exception|No space left|Permission denied|Read-only file system")


def _is_storage_failure(exc: BaseException) -> bool:
    """OSError and delta-rs errors; a Java failure only when its stack is about files (a failing
    Python UDF inside a write keeps its own message)."""
    name = type(exc).__name__
    if isinstance(exc, OSError) or name in _DELTA_RS_ERRORS:
        return True
    text = str(exc)
    return name == "Py4JJavaError" and "PythonException" not in text and bool(_JAVA_STORAGE.search(text))


def storage_cause(exc: BaseException) -> str:
    """The root cause of a storage failure in one line: the last ``Caused by:`` of a Java stack
    (Spark's writes), else the message's first meaningful line."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    caused = [ln[len("Caused by:"):].strip() for ln in lines if ln.startswith("Caused by:")]
    if caused:
        reason = caused[-1]
    else:
        body = [ln.lstrip(": ").strip() for ln in lines
                if not ln.startswith("at ") and not ln.startswith("An error occurred while calling")]
        reason = body[0] if body else type(exc).__name__
    return reason[:400]


def _parse_user_metadata(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    except (TypeError, ValueError):
        return {"value": raw}


def _ms_to_dt(ms: int | float | None) -> _dt.datetime:
    return _dt.datetime.fromtimestamp((ms or 0) / 1000.0, tz=_dt.timezone.utc)


class RsDeltaTables(DeltaTables):
    """delta-rs engine: Spark executors write Parquet; delta-rs commits and lists snapshots."""

    engine = "rs"

    def _table(self, spec: TableSpec, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        try:
            return DeltaTable(self.uri(spec), version=version, storage_options=self.storage_options or None)
        except Exception as exc:  # delta-rs raises TableNotFoundError / DeltaError variants
            if version is None and not self.exists(spec):
                raise TableNotFound(f"table {spec.name} does not exist under lake_root {self.root}: check lake_root, "
                                    f"or write the table first (its upstream load or job)") from exc
            raise TableNotFound(f"table {spec.name}: {str(exc).splitlines()[0]}") from exc

    def exists(self, spec: TableSpec) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.uri(spec), storage_options=self.storage_options or None))

    def version(self, spec: TableSpec) -> int:
        return int(self._table(spec).version())

    def schema(self, spec: TableSpec, version: int | None = None) -> "T.StructType":
        from pyspark.sql import types as T

        return T.StructType.fromJson(json.loads(self._table(spec, version).schema().to_json()))

    def history(self, spec: TableSpec, limit: int | None = None) -> list[Commit]:
        if not self.exists(spec):
            raise TableNotFound(f"table {spec.name} does not exist under {self.root}")
        out = []
        for h in self._table(spec).history(limit):
            out.append(Commit(int(h["version"]), _ms_to_dt(h.get("timestamp")), str(h.get("operation", "")),
                              _parse_user_metadata(h.get("userMetadata"))))
        return sorted(out, key=lambda c: -c.version)

    def files(self, spec: TableSpec, dt: DtFilter = None, version: int | None = None) -> list[str]:
        dts = _dt_list(dt)
        table = self._table(spec, version)
        pred = None if dts is None else [("dt", "in", dts)]
        return [_as_url(u) for u in table.file_uris(file_pruning_predicate=pred)]

    def clean_uncommitted(self, spec: TableSpec, min_age_s: float = 86_400, dry_run: bool = False) -> CleanResult:
        if not self.exists(spec):
            raise TableNotFound(f"table {spec.name} does not exist under {self.root}")
        table_uri = self.uri(spec)
        fs = _HadoopFs(self.spark, table_uri)
        root = fs.qualify(table_uri)
        referenced: set[str] = set()
        for commit in self.history(spec):  # every version still in the log: time travel keeps working
            try:
                referenced.update(_plain_path(u) for u in self._table(spec, commit.version).file_uris())
            except TableNotFound:  # a version whose log entries were cleaned up: not readable anyway
                continue
        cutoff_ms = (time.time() - min_age_s) * 1000
        staging, files, kept = [], [], 0
        for folder, newest_ms in fs.list_dirs(f"{table_uri}/_staging"):
            if newest_ms < cutoff_ms:
                staging.append(folder)
            else:
                kept += 1
        for st in fs.list_parquet(table_uri):
            rel = unquote(st.path[len(root) + 1:])
            if rel.startswith(("_staging/", "_delta_log/")) or _plain_path(st.path) in referenced:
                continue
            if st.mtime < cutoff_ms:
                files.append(st.path)
            else:
                kept += 1
        if not dry_run:
            for path in [*staging, *files]:
                fs.delete(path)
        return CleanResult(spec.name, tuple(staging), tuple(files), kept, dry_run)

    def _read(self, spec: TableSpec, dts: list[str] | None, version: int | None) -> "DataFrame":
        paths = self.files(spec, dts, version)
        if not paths:
            return self.spark.createDataFrame([], spec.schema)
        reader = self.spark.read.schema(spec.schema)
        if spec.partition_by:
            reader = reader.option("basePath", _as_url(self.uri(spec)))
        return reader.parquet(*paths)

    # -- writing ----------------------------------------------------------------------------
    def _delta_schema(self, spec: TableSpec) -> Any:
        from deltalake import Schema
        from pyspark.sql.pandas.types import to_arrow_schema

        return Schema.from_arrow(to_arrow_schema(spec.schema))

    def _check_existing_schema(self, table: Any, spec: TableSpec) -> None:
        have = {f.name: str(f.type) for f in table.schema().fields}
        want = {f.name: str(f.type) for f in self._delta_schema(spec).fields}
        diffs = [f"missing {n}" for n in want if n not in have] + [f"unexpected {n}" for n in have if n not in want]
        diffs += [f"{n} is {have[n]}, not {want[n]}" for n in want if n in have and have[n] != want[n]]
        if diffs:
            raise SchemaError(f"table {spec.name} exists with a different schema ({'; '.join(diffs)}): "
                              f"migrate or remove the table before writing")

    def _check_schema(self, spec: TableSpec) -> None:
        if self.exists(spec):
            self._check_existing_schema(self._table(spec), spec)

    def _write(self, df: "DataFrame", spec: TableSpec, mode: WriteMode, replace: dict[str, list[str]] | None,
               metadata: dict[str, Any]) -> WriteResult:
        table_uri = self.uri(spec)
        self._check_schema(spec)  # fail before any work when the table has another schema
        staging = f"{table_uri}/_staging/{uuid.uuid4().hex}"
        fs = _HadoopFs(self.spark, staging)
        try:
            _row_groups(df.write, spec).mode("errorifexists").partitionBy(*spec.partition_by).parquet(staging)
            return self._commit_staged(spec, staging, fs, mode, replace, metadata)
        finally:
            fs.delete(staging)

    def _commit_staged(self, spec: TableSpec, staging: str, fs: "_HadoopFs", mode: WriteMode,
                       replace: dict[str, list[str]] | None, metadata: dict[str, Any]) -> WriteResult:
        from deltalake import CommitProperties, DeltaTable
        from deltalake.transaction import AddAction, create_table_with_add_actions

        table_uri = self.uri(spec)
        faults.point("write.staged")
        adds: list[AddAction] = []
        rows: int | None = 0
        for st in fs.list_parquet(staging):
            rel = st.path[len(fs.qualify(staging)) + 1:]
            pvalues = _partition_values(rel, spec.partition_by)
            outside = {k: pvalues.get(k) for k, vs in (replace or {}).items() if pvalues.get(k) not in vs}
            if outside:
                raise PlatformError(f"write to {spec.name} replacing {replace} contains rows of {outside}")
            dest = f"{fs.qualify(table_uri)}/{rel}"
            fs.move(st.path, dest)
            n = _parquet_rows(dest)
            rows = rows + n if (n is not None and rows is not None) else None
            stats = json.dumps({"numRecords": n}) if n is not None else "{}"
            adds.append(AddAction(rel, st.size, pvalues, st.mtime, True, stats))
        faults.point("write.moved")  # files in the partition folders, not committed
        props = CommitProperties(custom_metadata={"userMetadata": json.dumps(metadata, default=str)})
        schema = self._delta_schema(spec)
        if not self.exists(spec):
            create_table_with_add_actions(
                table_uri, schema, adds, mode="error", partition_by=list(spec.partition_by) or None,
                name=spec.name.replace("/", "."), description=spec.description,
                storage_options=self.storage_options or None, commit_properties=props)
        else:
            table = self._table(spec)
            self._check_existing_schema(table, spec)
            filters = None if replace is None else [
                (k, "=", vs[0]) if len(vs) == 1 else (k, "in", vs) for k, vs in replace.items()]
            table.create_write_transaction(
                adds, mode=mode, schema=schema, partition_by=list(spec.partition_by) or None,
                partition_filters=filters, commit_properties=props)
        version = int(DeltaTable(table_uri, storage_options=self.storage_options or None).version())
        return WriteResult(spec.name, version, len(adds), rows)


class SparkDeltaTables(DeltaTables):
    """delta-spark engine (needs io.delta:delta-spark on the class path, see conf/cluster.example.yaml)."""

    engine = "spark"

    def __init__(self, spark: "SparkSession", lake_root: str, storage_options: dict[str, str] | None = None):
        super().__init__(spark, lake_root, storage_options)
        from core.spark import delta_spark_available

        if not delta_spark_available(spark):
            raise PlatformError(
                "delta.engine=spark but the Delta classes are not on Spark's class path: add "
                "spark.jars.packages=io.delta:delta-spark_2.12:3.3.2 to spark.conf, or use delta.engine=rs")

    def _dt(self, spec: TableSpec) -> Any:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, self.uri(spec))

    def exists(self, spec: TableSpec) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, self.uri(spec)))

    def version(self, spec: TableSpec) -> int:
        return self.history(spec, 1)[0].version

    def history(self, spec: TableSpec, limit: int | None = None) -> list[Commit]:
        if not self.exists(spec):
            raise TableNotFound(f"table {spec.name} does not exist under {self.root}")
        hist = self._dt(spec).history(limit) if limit else self._dt(spec).history()
        rows = hist.select("version", "timestamp", "operation", "userMetadata").collect()  # bounded by limit
        return [Commit(int(r.version), r.timestamp.replace(tzinfo=_dt.timezone.utc), r.operation,
                       _parse_user_metadata(r.userMetadata)) for r in rows]

    def schema(self, spec: TableSpec, version: int | None = None) -> "T.StructType":
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.uri(spec)).schema

    def _read(self, spec: TableSpec, dts: list[str] | None, version: int | None) -> "DataFrame":
        from pyspark.sql import functions as F

        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(self.uri(spec))
        return df.where(F.col("dt").isin(dts)) if dts is not None else df

    def files(self, spec: TableSpec, dt: DtFilter = None, version: int | None = None) -> list[str]:
        return sorted(self.read(spec, dt, version).inputFiles())

    def _write(self, df: "DataFrame", spec: TableSpec, mode: WriteMode, replace: dict[str, list[str]] | None,
               metadata: dict[str, Any]) -> WriteResult:
        from delta.tables import DeltaTable

        uri = self.uri(spec)
        if not self.exists(spec):
            (DeltaTable.createIfNotExists(self.spark).location(uri).addColumns(spec.schema)
             .partitionedBy(*spec.partition_by).execute())
        writer = (_row_groups(df.write, spec).format("delta").mode(mode)
                  .option("userMetadata", json.dumps(metadata, default=str)))
        if replace is not None:
            where = " AND ".join(
                f"{k} IN ({', '.join(_sql_str(v) for v in vs)})" for k, vs in replace.items())
            writer = writer.option("replaceWhere", where)
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        writer.save(uri)
        last = self._dt(spec).history(1).select("version", "operationMetrics").collect()[0]
        metrics = last.operationMetrics or {}
        rows = int(metrics["numOutputRows"]) if "numOutputRows" in metrics else None
        files = int(metrics.get("numFiles", 0))
        return WriteResult(spec.name, int(last.version), files, rows)

    def _commit_staged(self, spec: TableSpec, staging: str, fs: "_HadoopFs", mode: WriteMode,
                       replace: dict[str, list[str]] | None, metadata: dict[str, Any]) -> WriteResult:
        """delta-spark cannot adopt files it did not write: it reads the staged files and writes them."""
        staged = self.spark.read.schema(spec.schema).option("basePath", staging).parquet(staging)
        return self._write(spec.conform(staged), spec, mode, replace, metadata)


def get_tables(spark: "SparkSession", cfg: "Config") -> DeltaTables:
    """The Delta engine chosen by ``cfg.delta.engine`` over ``cfg.lake_root``."""
    cls: type[DeltaTables] = RsDeltaTables if cfg.delta.engine == "rs" else SparkDeltaTables
    return cls(spark, cfg.lake_root, cfg.delta.storage_options)


def _row_groups(writer: "DataFrameWriter", spec: TableSpec) -> "DataFrameWriter":
    """The Parquet row-group size of ``spec`` (``row_group_bytes``; Spark's default otherwise)."""
    return writer.option("parquet.block.size", str(spec.row_group_bytes)) if spec.row_group_bytes else writer


def get_tables_without_spark(cfg: "Config") -> DeltaTables | None:
    """The delta-rs engine without a Spark session, for what needs only the Delta log: ``exists``,
    ``version``, ``history``, ``files`` and ``partitions`` (reading or writing data raises). None under
    ``delta.engine: spark``, whose log reader is Spark itself."""
    if cfg.delta.engine != "rs":
        return None
    return RsDeltaTables(cast("SparkSession", None), cfg.lake_root, cfg.delta.storage_options)


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------- file system helpers
def _as_url(path: str) -> str:
    """Local paths become ``file://`` URLs (what Petastorm and Spark both accept)."""
    if "://" in path:
        return path
    return "file://" + path


def _plain_path(uri: str) -> str:
    """A file's location without scheme or percent-encoding, to compare listings from different APIs
    (``file:/x``, ``file:///x`` and ``/x`` are one file; object-store URIs keep their bucket)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return os.path.normpath(unquote(parsed.path))
    return f"{parsed.scheme}://{parsed.netloc}{unquote(parsed.path)}"


def _partition_values(rel: str, partition_by: Iterable[str]) -> dict[str, str | None]:
    parts = dict(p.split("=", 1) for p in rel.split("/")[:-1] if "=" in p)
    out: dict[str, str | None] = {}
    for col in partition_by:
        raw = parts.get(col)
        out[col] = None if raw in (None, "__HIVE_DEFAULT_PARTITION__") else unquote(raw)
    return out


def _parquet_rows(url: str) -> int | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        return None
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(unquote(parsed.path)).metadata.num_rows)


@dataclass(frozen=True)
class _FileStatus:
    path: str
    size: int
    mtime: int


class _HadoopFs:
    """The Hadoop FileSystem of a path, through Spark's JVM (local, HDFS, s3a, ...)."""

    def __init__(self, spark: "SparkSession", path: str):
        self._jvm: Any = spark._jvm
        conf = spark._jsc.hadoopConfiguration()
        self._fs = self._path(path).getFileSystem(conf)

    def _path(self, path: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def qualify(self, path: str) -> str:
        return str(self._fs.makeQualified(self._path(path)).toString()).rstrip("/")

    def list_parquet(self, root: str) -> list[_FileStatus]:
        out = []
        it = self._fs.listFiles(self._path(root), True)
        while it.hasNext():
            st = it.next()
            p = str(st.getPath().toString())
            name = p.rsplit("/", 1)[-1]
            if name.endswith(".parquet") and not name.startswith(("_", ".")):
                out.append(_FileStatus(p, int(st.getLen()), int(st.getModificationTime())))
        return out

    def list_dirs(self, root: str, newest: bool = True) -> list[tuple[str, int]]:
        """The folders directly under ``root`` (none when it does not exist), each with its
        modification time (ms), or with ``newest`` the newest one of anything inside it."""
        path = self._path(root)
        if not self._fs.exists(path):
            return []
        out = []
        for st in self._fs.listStatus(path):
            if not st.isDirectory():
                continue
            mtime = int(st.getModificationTime())
            if newest:
                it = self._fs.listFiles(st.getPath(), True)
                while it.hasNext():
                    mtime = max(mtime, int(it.next().getModificationTime()))
            out.append((str(st.getPath().toString()).rstrip("/"), mtime))
        return out

    def move(self, src: str, dst: str) -> None:
        dst_path = self._path(dst)
        self._fs.mkdirs(dst_path.getParent())
        if not self._fs.rename(self._path(src), dst_path):
            raise PlatformError(f"could not move {src} to {dst}")

    def delete(self, path: str) -> None:
        try:
            self._fs.delete(self._path(path), True)
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            logger.warning("could not delete staging folder %s", path, exc_info=True)
