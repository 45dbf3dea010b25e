"""Tiny inline tables and in-process job runs for the tests."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from core.cli import run_job
from core.delta import DeltaTables
from core.tables import TableSpec
from tests.conftest import LOCAL_CONF, TEST_SPARK


def ts(value: str) -> dt.datetime:
    """``2026-11-02T10:00:00.000001`` -> naive UTC datetime (the session time zone is UTC)."""
    return dt.datetime.fromisoformat(value)


def nullable(schema: T.StructType) -> T.StructType:
    return T.StructType([T.StructField(f.name, f.dataType, True) for f in schema.fields])


def frame(spark: SparkSession, spec: TableSpec, rows: Iterable[dict[str, Any]]):  # noqa: ANN201
    """A DataFrame of ``spec``'s columns from dict rows (missing keys are null)."""
    return spark.createDataFrame([tuple(r.get(c) for c in spec.columns) for r in rows], nullable(spec.schema))


def put(spark: SparkSession, tables: DeltaTables, spec: TableSpec, rows: Iterable[dict[str, Any]]) -> None:
    """Replace table ``spec`` with ``rows``."""
    tables.write(frame(spark, spec, rows), spec, "overwrite")


def item_and_users_lake(spark: SparkSession, tmp: Path, users: Iterable[int] = (1,)) -> DeltaTables:
    """A fresh lake under ``tmp`` (the test config) holding item 1 (price 2.0) and the given users."""
    from core import tables as t
    from core.delta import get_tables
    from tests.conftest import make_config

    tables = get_tables(spark, make_config(tmp))
    put(spark, tables, t.ITEMS, [{"item_id": 1, "price": 2.0}])
    put(spark, tables, t.USERS, [{"user_id": u} for u in users])
    return tables


def event(user: int, item: int, when: str, behavior: str = "click", scene: str | None = "recommend",
          query: str | None = None, day: str | None = None) -> dict[str, Any]:
    t = ts(when)
    return {"user_id": user, "item_id": item, "behavior": behavior, "scene": scene, "query": query,
            "event_time": t, "dt": day or t.date().isoformat()}


def job_argv(tmp: Path, *overrides: str) -> list[str]:
    sets = [f"lake_root={tmp / 'lake'}", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"mlflow.artifact_location={tmp / 'mlartifacts'}", *TEST_SPARK, *overrides]
    return ["--config", str(LOCAL_CONF), *[x for s in sets for x in ("--set", s)]]


def run(job: ModuleType, tmp: Path, *args: str, overrides: tuple[str, ...] = (), lake: str | None = None) -> int:
    """Run a job module in-process (it reuses the test Spark session); MLflow under ``tmp``, the
    lake under ``tmp`` too unless ``lake`` names another one."""
    extra = (f"lake_root={lake}",) if lake else ()
    return run_job(job.JOB, job.parser(), job.run, [*job_argv(tmp, *overrides, *extra), *args])
