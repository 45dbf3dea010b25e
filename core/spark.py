"""The one Spark session factory. It is the only module that knows about Delta engines' Spark settings."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import TYPE_CHECKING

from core.errors import EnvironmentProblem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from core.config import Config

logger = logging.getLogger(__name__)

# Settings every session gets; the config's spark.conf may override all but the time zone.
BASE_CONF: dict[str, str] = {
    # Daily windows and dt partitions are UTC everywhere.
    "spark.sql.session.timeZone": "UTC",
    # delta-rs and other readers expect INT64 microsecond timestamps, not INT96.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # dt partition values stay strings (the table schemas say so).
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}

DELTA_SPARK_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Settings that can be changed on a running session (applied when a session is reused).
_RUNTIME_KEYS = ("spark.sql.",)


def check_runtime() -> None:
    """Fail early, in one line, when the machine cannot run Spark jobs."""
    if sys.version_info[:2] != (3, 11):
        found = "%d.%d" % sys.version_info[:2]
        raise EnvironmentProblem(
            f"Python 3.11 is required, found {found}: install python3.11 and re-run `make setup`")
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise EnvironmentProblem(
            "Java not found: install Java 17 (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")


def is_local_master(master: str) -> bool:
    return master.startswith("local")


def session_conf(cfg: "Config") -> dict[str, str]:
    """The full Spark configuration a job's session gets from ``cfg``."""
    conf = dict(BASE_CONF)
    if cfg.delta.engine == "spark":
        conf.update(DELTA_SPARK_CONF)
    conf.update(cfg.spark.conf)
    conf["spark.sql.session.timeZone"] = "UTC"
    return conf


def launched_by_spark_submit() -> bool:
    """True when this interpreter was started by ``spark-submit`` (its JVM gateway already runs)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: "Config") -> "SparkSession":
    """Return the active Spark session, or build one from ``cfg``.

    A reused session (tests, notebooks, ``spark-submit``) gets the SQL settings of ``cfg``
    applied at run time; the UTC session time zone is always pinned.
    """
    from pyspark.sql import SparkSession

    conf = session_conf(cfg)
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in conf.items():
            if key.startswith(_RUNTIME_KEYS):
                active.conf.set(key, value)
        return active
    check_runtime()
    submitted = launched_by_spark_submit()
    master = cfg.spark.master
    if submitted:
        from pyspark import SparkConf

        master = SparkConf().get("spark.master", "local[*]")  # --master of spark-submit wins
    if is_local_master(master):
        # Executors of a local or local-cluster master run this same interpreter (same venv).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if not submitted:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    logger.info("spark session %s master=%s", spark.version, spark.sparkContext.master)
    return spark


def delta_spark_available(spark: "SparkSession") -> bool:
    """True when delta-spark's JVM classes are on the class path of ``spark``."""
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # type: ignore[union-attr]
        return True
    except Exception:  # noqa: BLE001 - py4j raises a generic Py4JJavaError here
        return False
