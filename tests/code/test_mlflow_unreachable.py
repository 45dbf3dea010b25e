"""A tracking server or registry that does not answer fails within the configured bound, with one
line naming the URI and the config key; reading the registry creates nothing in the store."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from core.errors import PlatformError
from tests.conftest import make_config

# MLflow's own defaults (7 retries, exponential backoff from 2 s, 120 s per request) wait minutes.
BOUND_S = 60


def dead_uri() -> str:
    """An http URI on a local port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.reliability(
    "services",
    "the MLflow registry refuses connections",
    "fails within the configured bound with one line naming the URI and the config key")
def test_registry_unreachable_is_one_line_within_the_bound(tmp_path: Path) -> None:
    from registry.models import ModelRegistry

    uri = dead_uri()
    cfg = make_config(tmp_path, f"mlflow.tracking_uri={uri}", "mlflow.request_timeout_s=2", "mlflow.max_retries=1")
    started = time.monotonic()
    with pytest.raises(PlatformError) as err:
        ModelRegistry(cfg.mlflow)
    assert time.monotonic() - started < BOUND_S
    line = str(err.value)
    assert "\n" not in line and uri in line and "mlflow.tracking_uri" in line and "registry" in line
    assert "mlflow.max_retries=1" in line


@pytest.mark.reliability(
    "services",
    "an MLflow server that accepts connections and never answers",
    "fails within mlflow.request_timeout_s x (max_retries + 1) + backoff")
def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    from registry.models import ModelRegistry

    with socket.socket() as server:  # accepts connections (the backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        cfg = make_config(tmp_path, f"mlflow.tracking_uri={uri}", "mlflow.request_timeout_s=1", "mlflow.max_retries=1")
        started = time.monotonic()
        with pytest.raises(PlatformError, match="did not answer"):
            ModelRegistry(cfg.mlflow)
        assert time.monotonic() - started < BOUND_S


@pytest.mark.reliability(
    "services",
    "the MLflow tracking server is unreachable when a run starts",
    "one line naming the URI; no traceback")
def test_tracker_unreachable_is_one_line(tmp_path: Path) -> None:
    from registry.tracking import MlflowTracker

    uri = dead_uri()
    cfg = make_config(tmp_path, f"mlflow.tracking_uri={uri}", "mlflow.request_timeout_s=2", "mlflow.max_retries=0")
    with pytest.raises(PlatformError, match="tracking server .* did not answer"):
        with MlflowTracker(cfg.mlflow, run_name="x"):
            pass


@pytest.mark.reliability(
    "services",
    "the nightly job with an unreachable MLflow server",
    "exit 1 and one line on stderr, no traceback")
def test_publish_job_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import publish_user_representations as publish
    from tests.helpers import run

    uri = dead_uri()
    (tmp_path / "lake").mkdir()  # a lake root that exists: the registry is the only thing missing
    code = run(publish, tmp_path, "--date", "2026-11-08",
               overrides=(f"mlflow.tracking_uri={uri}", "mlflow.request_timeout_s=2", "mlflow.max_retries=0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("publish_user_representations failed: MLflow registry at " + uri)
    assert not any("Traceback" in line for line in err)


@pytest.mark.reliability(
    "services",
    "the nightly job only reads the registry",
    "it creates no experiment in the tracking store")
def test_reading_the_registry_creates_no_experiment(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from registry.models import ModelRegistry

    cfg = make_config(tmp_path)
    registry = ModelRegistry(cfg.mlflow)
    assert registry.champion_version() is None
    names = [e.name for e in MlflowClient().search_experiments()]
    assert cfg.mlflow.experiment not in names
