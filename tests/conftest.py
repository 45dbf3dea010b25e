"""Shared fixtures: one Spark session for the whole test session, tiny configs, a tiny world."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from core.config import Config, load_config

pytest_plugins = ["tests.reliability"]

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONF = ROOT / "conf" / "local.yaml"

# The settings of a small world: ~300 users over 8 days, seconds to generate.
TINY_WORLD = [
    "demo.n_users=300", "demo.n_items=2000", "demo.n_shops=120", "demo.n_brands=80", "demo.n_categories=12",
    "demo.n_talents=100", "demo.days=8", "demo.users_per_partition=100", "demo.start_date=2026-11-01",
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


TINY_START, TINY_END = "2026-11-04", "2026-11-08"
VALID_DAY = "2026-11-07"


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_world):  # noqa: ANN001, ANN201
    """The feature jobs run on the tiny world: sequences and stats of the last day, the training set
    of 2026-11-04..08 (training split 11-04..06, validation 11-07, test 11-08: ``TRAIN_DAYS``,
    ``VALID_DAY``, ``TINY_END``). Returns (config, DeltaTables, lake folder)."""
    from jobs import build_sequences, build_training_set, feature_stats
    from tests.helpers import run

    cfg, tables = tiny_world
    tmp = Path(cfg.lake_root).parent
    assert run(build_sequences, tmp, "--date", TINY_END, overrides=tuple(TINY_WORLD)) == 0
    assert run(build_training_set, tmp, "--start", TINY_START, "--end", TINY_END,
               overrides=tuple(TINY_WORLD)) == 0
    assert run(feature_stats, tmp, "--date", TINY_END, "--training-start", TINY_START,
               "--training-end", TINY_END, overrides=(*TINY_WORLD, "stats.drift_threshold=100")) == 0
    return cfg, tables, tmp


# A small DUPN (fast on 2 cores) for job tests: conf/local.yaml's model without the hybrid's side heads (its
# default), which need features/hybrid_examples; tests/code/test_hybrid_job.py runs the hybrid through the jobs.
# Its heads read the target priors as pieces (model.prior_pieces, on in conf/local.yaml), so it is not the
# benchmarks' DUPN-all (benchmarks.common.DUPN_ALL), whose heads read them as logs.
SMALL = ("training.hybrid=false",
         "training.model.lstm_hidden=16", "training.model.attention_hidden=8", "training.model.pooled_dim=16",
         "training.model.representation_dim=16", "training.model.head_hidden=16", "training.model.expert_dim=16",
         "training.model.query_dim=8", "training.model.talent_dim=8", "training.batch_size=128",
         "training.eval_batch_size=512", "training.epochs=1", "training.use_distributor=false",
         "training.optimizer=adam", "training.lr=0.003", "training.reader_workers=1")
TRAIN_DAYS = ("--start", "2026-11-04", "--end", "2026-11-06")


@pytest.fixture(scope="session")
def tiny_model(tiny_pipeline, tmp_path_factory):  # noqa: ANN001, ANN201
    """A fresh MLflow store (with the tiny pipeline's lake linked in) holding one full run,
    registered and promoted to champion. Returns (config, DeltaTables, folder)."""
    from jobs import train
    from tests.helpers import run

    _, tables, lake_tmp = tiny_pipeline
    tmp = tmp_path_factory.mktemp("mlflow")
    lake = f"lake_root={lake_tmp / 'lake'}"
    assert run(train, tmp, "--mode", "full", *TRAIN_DAYS, overrides=(*TINY_WORLD, *SMALL, lake)) == 0
    return make_config(tmp, *TINY_WORLD, *SMALL, lake), tables, tmp


@pytest.fixture(scope="session")
def tiny_published(tiny_model):  # noqa: ANN001, ANN201
    """outputs/user_representations of the tiny world for the last two days (the first one
    without prepared sequences, so the nightly job builds them). Returns tiny_model's tuple."""
    from jobs import publish_user_representations as publish
    from tests.helpers import run

    cfg, tables, tmp = tiny_model
    for day in ("2026-11-07", TINY_END):
        assert run(publish, tmp, "--date", day, overrides=(*TINY_WORLD, *SMALL), lake=cfg.lake_root) == 0
    return tiny_model
