"""Shared fixtures: one Spark session for the whole test session, tiny configs, a tiny world."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONF = ROOT / "conf" / "local.yaml"

# The settings of a small world: ~300 users over 5 days, seconds to generate.
TINY_WORLD = [
    "demo.n_users=300", "demo.n_items=2000", "demo.n_shops=120", "demo.n_brands=80", "demo.n_categories=12",
    "demo.n_talents=100", "demo.days=5", "demo.users_per_partition=100", "demo.start_date=2026-11-01",
    "demo.events_per_user_day=6",
]
TEST_SPARK = [
    "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=2", "spark.conf.spark.driver.host=127.0.0.1",
    "spark.conf.spark.ui.enabled=false", "spark.conf.spark.driver.memory=4g",
    "spark.conf.spark.sql.adaptive.enabled=false",
]


def make_config(tmp: Path, *overrides: str) -> Config:
    """conf/local.yaml with the lake and MLflow under ``tmp`` and test Spark settings."""
    return load_config(LOCAL_CONF, [
        f"lake_root={tmp / 'lake'}", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp / 'mlartifacts'}", *TEST_SPARK, *overrides])


def _delta_jar_settings() -> list[str]:
    """With DELTA_SPARK_JARS (comma-separated jar paths) set, the session gets delta-spark too."""
    jars = os.environ.get("DELTA_SPARK_JARS", "").strip()
    if not jars:
        return []
    return [f"spark.conf.spark.jars={jars}",
            "spark.conf.spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
            "spark.conf.spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"]


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from core.spark import get_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = get_spark(load_config(LOCAL_CONF, TEST_SPARK + _delta_jar_settings()))
    yield session
    session.stop()


@pytest.fixture()
def cfg_factory(tmp_path: Path) -> Callable[..., Config]:
    def factory(*overrides: str) -> Config:
        return make_config(tmp_path, *overrides)
    return factory


@pytest.fixture(scope="session")
def tiny_world(spark, tmp_path_factory):
    """A tiny demo world written once per test session; returns (config, DeltaTables)."""
    from core.delta import get_tables
    from features.demo_world import generate_world

    tmp = tmp_path_factory.mktemp("tiny_world")
    cfg = make_config(tmp, *TINY_WORLD)
    tables = get_tables(spark, cfg)
    for spec, df in generate_world(spark, cfg.demo, cfg.inputs.rank_features_dim).items():
        tables.write(df, spec, "overwrite", metadata={"job": "test"})
    return cfg, tables
