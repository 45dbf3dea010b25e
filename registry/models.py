"""Logging, registering, loading and promoting models in the MLflow registry.

A registered version is an MLflow pyfunc model whose ``predict`` is the **user part** only
(sequence + profile -> universal representation and purchasing-power probabilities: the
paper's serving split, run once per user). Its artifact ``model_state.pt`` holds the full
network (``ModelSpec`` + weights), so :func:`load_version` also gives the item-side scorers
(:meth:`training.model.DUPNModel.item_scorer`) and fine-tuning starts from it.

The version carrying the alias ``champion`` (``mlflow.champion_alias``) is the one in
production; :func:`decide_promotion` is the gate that moves it.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from core.config import MlflowConfig, PromotionConfig
from core.errors import PlatformError
from registry.tracking import connect, is_unreachable, unreachable
from training.evaluation import Interval
from training.inference import _FLOAT_INPUTS, _SCALAR_INPUTS, USER_INPUTS, load_state_file, user_outputs

if TYPE_CHECKING:
    from training.evaluation import Predictions
    from training.model import TaskModel
    from training.spec import ModelSpec
    from training.tabular import TabularPredictions, TabularSpec

logger = logging.getLogger(__name__)

STATE_ARTIFACT = "model_state"


def _outputs(model: "TaskModel", frame: pd.DataFrame) -> pd.DataFrame:
    """What a registered version's pyfunc returns: a DUPN-family model's user part (embedding,
    ppp_probs, ppp_tier per user row) or a tabular model's task probabilities per raw row."""
    from training.tabular import TabularModel, predict_frame

    if isinstance(model, TabularModel):
        return predict_frame(model, frame)
    return user_outputs(model, frame)


def _python_model() -> Any:
    import mlflow.pyfunc

    base: Any = mlflow.pyfunc.PythonModel

    class PlatformModel(base):
        """pyfunc: user-side columns of ``features/user_sequences`` -> embedding, ppp_probs, ppp_tier (DUPN
        family); raw rows of the training table -> ``<task>_prob`` / ``<task>_probs`` (tabular models)."""

        def load_context(self, context: Any) -> None:
            self.model = load_state_file(context.artifacts[STATE_ARTIFACT])

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) \
                -> pd.DataFrame:
            return _outputs(self.model, model_input)

    return PlatformModel()


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs: list[Any] = [
        ColSpec(DataType.long, n) if n in _SCALAR_INPUTS
        else ColSpec(Array(DataType.float if n in _FLOAT_INPUTS else DataType.long), n) for n in USER_INPUTS]
    outputs: list[Any] = [ColSpec(Array(DataType.float), "embedding"), ColSpec(Array(DataType.float), "ppp_probs"),
                          ColSpec(DataType.integer, "ppp_tier")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_model(state: bytes, tabular: bool = False) -> str:
    """Log the model (pyfunc + full state) to the active run; returns its ``runs:/`` URI. A DUPN-family
    model's pyfunc is its user part; a tabular model's (``tabular``) scores raw rows of its table."""
    import mlflow
    import mlflow.pyfunc

    code = [str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("core", "features", "training", "registry")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_state.pt"
        path.write_bytes(state)
        info = mlflow.pyfunc.log_model(name="model", python_model=_python_model(),
                                       artifacts={STATE_ARTIFACT: str(path)},
                                       signature=None if tabular else signature(), code_paths=code,
                                       pip_requirements=[])
    run = mlflow.active_run()
    return f"runs:/{run.info.run_id}/model" if run is not None else str(info.model_uri)


@dataclass
class LoadedModel:
    """A registered version, loaded."""

    name: str
    version: str
    run_id: str
    model: "TaskModel"
    aliases: list[str] = field(default_factory=list)

    @property
    def spec(self) -> "ModelSpec":
        return self.model.spec


class ModelRegistry:
    """The configured registered model (``mlflow.registered_model``) and its ``champion`` alias."""

    def __init__(self, cfg: MlflowConfig):
        from mlflow import MlflowClient

        connect(cfg)  # reading the registry needs no experiment: create nothing
        self.cfg = cfg
        self.name = cfg.registered_model
        self.alias = cfg.champion_alias
        self.client = MlflowClient()
        started = time.monotonic()
        try:  # one bounded request now, so an unreachable registry is one clear line, not "no champion"
            self.client.search_registered_models(max_results=1)
        except Exception as exc:  # noqa: BLE001 - see registry.tracking.is_unreachable
            if is_unreachable(exc):
                raise unreachable(cfg, "registry", exc, time.monotonic() - started) from None
            raise

    def register(self, model_uri: str, tags: Mapping[str, str] | None = None) -> str:
        import mlflow

        mv = mlflow.register_model(model_uri, self.name, tags=dict(tags or {}))
        return str(mv.version)

    def champion_version(self) -> str | None:
        """Version carrying the champion alias, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException:
            return None

    def set_champion(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, self.alias, version)

    def load(self, version: str | None = None) -> LoadedModel:
        """Load ``version`` (default: the champion) with its full network.

        Raises:
            PlatformError: no champion alias / no such version, with what to run.
        """
        from mlflow.exceptions import MlflowException

        if version is None:
            version = self.champion_version()
            if version is None:
                raise PlatformError(
                    f"no version of registered model '{self.name}' carries the alias '{self.alias}': train and "
                    f"promote one (python -m jobs.train --mode full ...) or pass --model-version N")
        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise PlatformError(f"registered model '{self.name}' has no version {version} ({self.versions_summary()}); "
                                f"pass one of them to --model-version, or omit it for the champion") from None
        import mlflow

        local = mlflow.artifacts.download_artifacts(f"models:/{self.name}/{mv.version}")
        state = next(Path(local).rglob("model_state.pt"), None)
        if state is None:
            raise PlatformError(f"version {mv.version} of '{self.name}' has no model_state.pt artifact")
        model = load_state_file(state, f"version {mv.version} of registered model '{self.name}'")
        return LoadedModel(self.name, str(mv.version), str(mv.run_id), model,
                           list(getattr(mv, "aliases", []) or []))

    def versions_summary(self) -> str:
        """'its versions: 1..7' (or 'it has no version'), for an error line."""
        from mlflow.exceptions import MlflowException

        try:
            found = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{self.name}'"))
        except MlflowException:
            found = []
        if not found:
            return "it has no version"
        return f"its versions: {found[0]}" + (f"..{found[-1]}" if len(found) > 1 else "")

    def state_bytes(self, version: str) -> bytes:
        import mlflow

        local = mlflow.artifacts.download_artifacts(f"models:/{self.name}/{version}")
        state = next(Path(local).rglob("model_state.pt"))
        return state.read_bytes()


@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion gate, with the interval of every compared metric."""

    promote: bool
    reason: str
    intervals: tuple[Interval, ...] = ()
    confidence_label: str = "95% CI"

    @property
    def comparisons(self) -> dict[str, dict[str, float]]:
        return {i.metric: {"candidate": i.candidate, "champion": i.champion, "delta": i.delta, "low": i.low,
                           "high": i.high} for i in self.intervals}

    def describe(self) -> str:
        rows = ", ".join(i.describe() for i in self.intervals)
        return f"{'PROMOTED' if self.promote else 'BLOCKED'}: {self.reason}" + \
            (f" (candidate - champion [{self.confidence_label}]: {rows})" if rows else "")


def decide_promotion(candidate: "Predictions", champion: "Predictions | None", cfg: PromotionConfig) -> Decision:
    """The gate: candidate and champion scored on the same test examples, compared by a paired
    bootstrap over users (:func:`training.evaluation.paired_bootstrap`).

    The candidate is blocked only when a metric is worse **beyond its confidence interval** (the
    interval of candidate - champion lies below zero), or lacks a metric the champion has (a
    dropped task). A difference inside the interval is noise and does not block.
    """
    from training.evaluation import GATED_METRICS, metrics, paired_bootstrap

    label = f"{cfg.confidence:.0%} CI, {cfg.resamples} user resamples"
    if champion is None:
        return Decision(True, "no current champion", (), label)
    intervals = tuple(paired_bootstrap(candidate, champion, cfg.resamples, cfg.confidence, cfg.seed))
    return gate(intervals, metrics(candidate), metrics(champion), GATED_METRICS, label)


def gate(intervals: tuple[Interval, ...], have: Mapping[str, float], old: Mapping[str, float],
         gated: Sequence[str], label: str) -> Decision:
    """Block when the candidate lacks a gated metric the champion has, or is worse beyond an interval."""
    missing = [m for m in gated if not math.isnan(old.get(m, math.nan)) and math.isnan(have.get(m, math.nan))]
    if missing:
        return Decision(False, f"candidate lacks {', '.join(missing)} that the champion has", intervals, label)
    worse = [i for i in intervals if i.worse]
    if worse:
        return Decision(False, "worse than the champion beyond noise: " + "; ".join(i.describe() for i in worse),
                        intervals, label)
    better = sum(1 for i in intervals if i.low > 0)
    return Decision(True, f"no metric worse beyond its interval ({better} of {len(intervals)} better beyond it)",
                    intervals, label)


def decide_tabular_promotion(candidate: "TabularPredictions", champion: "TabularPredictions | None",
                             spec: "TabularSpec", cfg: PromotionConfig) -> Decision:
    """The same gate for a tabular model: a paired bootstrap over the test rows of every task's main
    metric (AUC or accuracy); ``champion`` None promotes."""
    from training.tabular import bootstrap, main_metric

    label = f"{cfg.confidence:.0%} CI, {cfg.resamples} row resamples"
    if champion is None:
        return Decision(True, "no current champion", (), label)
    intervals = tuple(bootstrap(candidate, champion, spec, cfg.resamples, cfg.confidence, cfg.seed))
    have = {main_metric(spec, t): 0.0 for t in candidate.probs}
    have.update({i.metric: i.candidate for i in intervals})
    dropped = [t for t in champion.probs if t not in candidate.probs]
    old = {f"{t}_dropped": 0.0 for t in dropped}  # a task the champion has and the candidate lacks blocks
    old.update({i.metric: i.champion for i in intervals})
    return gate(intervals, have, old, [*have, *old], label)
