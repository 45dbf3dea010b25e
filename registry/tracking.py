"""Experiment tracking behind an interface: training code calls ``log_metrics``; the MLflow
adapter lives here, and tests pass :class:`MemoryTracker`."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from core.config import MlflowConfig
from core.errors import PlatformError

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    """What a job logs about a run."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dict(self, data: Any, path: str) -> None: ...

    def log_figure(self, figure: Any, path: str) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if f == f and f not in (float("inf"), float("-inf")):
            out[k] = f
    return out


class MemoryTracker:
    """Keeps everything in memory (tests)."""

    def __init__(self, run_id: str = "memory-run"):
        self.run_id = run_id
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.dicts: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}
        self.tags: dict[str, str] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, _finite(metrics)))

    def log_dict(self, data: Any, path: str) -> None:
        self.dicts[path] = json.loads(json.dumps(data, default=str))

    def log_figure(self, figure: Any, path: str) -> None:
        self.figures[path] = figure

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def last(self, name: str) -> float | None:
        for _, m in reversed(self.metrics):
            if name in m:
                return m[name]
        return None


def _file_uri(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return Path(path).resolve().as_uri()


def connect(cfg: MlflowConfig) -> None:
    """Point MLflow at the configured tracking server / registry, with its HTTP requests bounded by
    ``mlflow.request_timeout_s`` and ``mlflow.max_retries`` (set for this process and the processes
    it starts). Creates nothing."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(cfg.request_timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    mlflow.set_tracking_uri(cfg.tracking_uri)
    if cfg.registry_uri:
        mlflow.set_registry_uri(cfg.registry_uri)


def unreachable(cfg: MlflowConfig, what: str, exc: BaseException, seconds: float) -> PlatformError:
    """The one-line error for a tracking server or registry that did not answer."""
    uri = cfg.registry_uri or cfg.tracking_uri if what == "registry" else cfg.tracking_uri
    key = "mlflow.registry_uri" if what == "registry" and cfg.registry_uri else "mlflow.tracking_uri"
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return PlatformError(
        f"MLflow {what} at {uri} did not answer ({type(exc).__name__}: {reason}) within {seconds:.0f}s "
        f"(mlflow.request_timeout_s={cfg.request_timeout_s:g}, mlflow.max_retries={cfg.max_retries}): "
        f"start the server or fix {key}")


def configure_mlflow(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured tracking server / registry (:func:`connect`); return the
    experiment id, creating the experiment if needed.

    A local ``artifact_location`` becomes an absolute ``file://`` URI so runs started from any
    working directory (TorchDistributor workers, Spark executors) find their artifacts. A server that
    does not answer raises :class:`PlatformError` (one line) within the configured bound.
    """
    import mlflow

    connect(cfg)
    started = time.monotonic()
    try:
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        return str(mlflow.create_experiment(cfg.experiment, artifact_location=_file_uri(cfg.artifact_location)))
    except Exception as exc:  # noqa: BLE001 - connection errors come as MlflowException, requests' or OS errors
        if is_unreachable(exc):
            raise unreachable(cfg, "tracking server", exc, time.monotonic() - started) from None
        raise


def is_unreachable(exc: BaseException) -> bool:
    """A failure to reach the server (as opposed to an answer the server gave)."""
    import requests

    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out", "Failed to establish",
                                   "API request to", "Name or service not known"))


class MlflowTracker:
    """A tracker writing to one MLflow run. Use as a context manager::

        with MlflowTracker(cfg.mlflow, run_name="train-full") as tracker:
            tracker.log_params(...)
    """

    def __init__(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.run_name = run_name
        self.initial_tags = dict(tags or {})
        self.run_id = ""

    def __enter__(self) -> "MlflowTracker":
        import mlflow

        experiment_id = configure_mlflow(self.cfg)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name, tags=self.initial_tags)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import mlflow

        mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        flat = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in params.items()}
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = _finite(metrics)
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_dict(self, data: Any, path: str) -> None:
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(data, default=str)), path)

    def log_figure(self, figure: Any, path: str) -> None:
        import mlflow

        mlflow.log_figure(figure, path)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(local_path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags(dict(tags))

    def log_text(self, text: str, path: str) -> None:
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / Path(path).name
            p.write_text(text)
            mlflow.log_artifact(str(p), str(Path(path).parent) if Path(path).parent != Path(".") else None)
