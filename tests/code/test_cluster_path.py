"""Jobs under spark-submit on a real standalone cluster (separate executor JVMs and Python workers),
so that nothing silently relies on driver-local state."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_WORLD

ROOT = Path(__file__).resolve().parents[2]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def spark_submit(job: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ.copy()
    env["PYSPARK_PYTHON"] = sys.executable
    cmd = [str(SPARK_SUBMIT), "--master", "local-cluster[2,1,1024]", "--conf", "spark.ui.enabled=false",
           "--conf", "spark.driver.host=127.0.0.1", f"jobs/{job}.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.cluster
def test_generate_demo_world_on_local_cluster(tmp_path: Path, spark) -> None:
    from core.config import load_config
    from core.delta import get_tables
    from core import tables as t

    sets = [x for kv in TINY_WORLD + [f"lake_root={tmp_path / 'lake'}"] for x in ("--set", kv)]
    res = spark_submit("generate_demo_world", "--config", "conf/local.yaml", *sets)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "generate_demo_world: 12 tables" in res.stdout
    cfg = load_config(ROOT / "conf/local.yaml", [f"lake_root={tmp_path / 'lake'}"])
    tables = get_tables(spark, cfg)
    assert tables.read(t.EVENTS).count() > 1000
    assert len(tables.partitions(t.IMPRESSIONS)) == 8


@pytest.mark.cluster
def test_nightly_job_on_local_cluster(tiny_model) -> None:  # noqa: ANN001
    """The executors score with the broadcast model in their own Python workers."""
    from core import tables as t
    from tests.conftest import SMALL, TINY_END, TINY_WORLD
    from tests.helpers import job_argv

    cfg, tables, tmp = tiny_model
    argv = job_argv(tmp, *TINY_WORLD, *SMALL, f"lake_root={cfg.lake_root}")
    res = spark_submit("publish_user_representations", *argv, "--date", TINY_END)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "publish_user_representations: wrote outputs/user_representations" in res.stdout
    out = tables.read(t.USER_REPRESENTATIONS, dt=TINY_END)
    assert out.count() == tables.read(t.USER_SEQUENCES, dt=TINY_END).count()
