"""Logging, registering, loading and promoting DUPN models in the MLflow registry.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from core.config import MlflowConfig
from core.errors import PlatformError
from registry.tracking import configure_mlflow

if TYPE_CHECKING:
    from training.model import DUPNModel
    from training.spec import ModelSpec

logger = logging.getLogger(__name__)

STATE_ARTIFACT = "model_state"
USER_INPUTS = ("seq_len", "seq_item", "seq_shop", "seq_brand", "seq_category", "seq_tags", "seq_behavior",
               "seq_scene", "seq_time_bucket", "seq_log_price", "user_age", "user_gender", "user_city", "user_dense")
_FLOAT_INPUTS = ("seq_log_price", "user_dense")
_SCALAR_INPUTS = ("seq_len", "user_age", "user_gender", "user_city")
# held-out metrics the promotion gate compares (higher is better for all of them)
GATED_METRICS = ("ctr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy", "ppp_macro_f1")


def frame_to_batch(frame: pd.DataFrame) -> dict[str, Any]:
    """User-side columns of a pandas frame (array cells) -> model batch of tensors."""
    import torch

    batch = {}
    for name in USER_INPUTS:
        if name not in frame.columns:
            raise PlatformError(f"model input lacks column '{name}' (a features/user_sequences column)")
        col = frame[name].to_numpy()
        if name in _SCALAR_INPUTS:
            batch[name] = torch.as_tensor(col.astype(np.int64))
        else:
            arr = np.stack([np.asarray(v) for v in col]) if len(col) else np.zeros((0, 1))
            dtype = np.float32 if name in _FLOAT_INPUTS else np.int64
            batch[name] = torch.as_tensor(arr.astype(dtype))
    return batch


def user_outputs(model: "DUPNModel", frame: pd.DataFrame) -> pd.DataFrame:
    """``embedding`` (float32 arrays), ``ppp_probs`` (7 floats) and ``ppp_tier`` (1..7) per row."""
    import torch

    part = model.user_part().eval()
    with torch.no_grad():
        rep, probs = part(frame_to_batch(frame))
    probs_np = probs.numpy().astype(np.float32)
    return pd.DataFrame({"embedding": list(rep.numpy().astype(np.float32)), "ppp_probs": list(probs_np),
                         "ppp_tier": probs_np.argmax(axis=1).astype(np.int32) + 1})


def load_state_file(path: str | Path) -> "DUPNModel":
    import torch

    from training.model import build_model
    from training.spec import ModelSpec

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model = build_model(ModelSpec.from_dict(state["spec"]))
    model.load_state_dict(state["weights"])
    return model.eval()


def _python_model() -> Any:
    import mlflow.pyfunc

    base: Any = mlflow.pyfunc.PythonModel

    class UserRepresentationModel(base):
        """pyfunc: user-side columns of ``features/user_sequences`` -> embedding, ppp_probs, ppp_tier."""

        def load_context(self, context: Any) -> None:
            self.model = load_state_file(context.artifacts[STATE_ARTIFACT])

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) \
                -> pd.DataFrame:
            return user_outputs(self.model, model_input)

    return UserRepresentationModel()


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs: list[Any] = [
        ColSpec(DataType.long, n) if n in _SCALAR_INPUTS
        else ColSpec(Array(DataType.float if n in _FLOAT_INPUTS else DataType.long), n) for n in USER_INPUTS]
    outputs: list[Any] = [ColSpec(Array(DataType.float), "embedding"), ColSpec(Array(DataType.float), "ppp_probs"),
                          ColSpec(DataType.integer, "ppp_tier")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_model(state: bytes) -> str:
    """Log the model (pyfunc user part + full state) to the active run; returns its ``runs:/`` URI."""
    import mlflow
    import mlflow.pyfunc

    code = [str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("core", "features", "training", "registry")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_state.pt"
        path.write_bytes(state)
        info = mlflow.pyfunc.log_model(name="model", python_model=_python_model(),
                                       artifacts={STATE_ARTIFACT: str(path)}, signature=signature(),
                                       code_paths=code, pip_requirements=[])
    run = mlflow.active_run()
    return f"runs:/{run.info.run_id}/model" if run is not None else str(info.model_uri)


@dataclass
class LoadedModel:
    """A registered version, loaded."""

    name: str
    version: str
    run_id: str
    model: "DUPNModel"
    aliases: list[str] = field(default_factory=list)

    @property
    def spec(self) -> "ModelSpec":
        return self.model.spec


class ModelRegistry:
    """The configured registered model (``mlflow.registered_model``) and its ``champion`` alias."""

    def __init__(self, cfg: MlflowConfig):
        from mlflow import MlflowClient

        configure_mlflow(cfg)
        self.cfg = cfg
        self.name = cfg.registered_model
        self.alias = cfg.champion_alias
        self.client = MlflowClient()

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
            raise PlatformError(f"registered model '{self.name}' has no version {version}") from None
        import mlflow

        local = mlflow.artifacts.download_artifacts(f"models:/{self.name}/{mv.version}")
        state = next(Path(local).rglob("model_state.pt"), None)
        if state is None:
            raise PlatformError(f"version {mv.version} of '{self.name}' has no model_state.pt artifact")
        return LoadedModel(self.name, str(mv.version), str(mv.run_id), load_state_file(state),
                           list(getattr(mv, "aliases", []) or []))

    def state_bytes(self, version: str) -> bytes:
        import mlflow

        local = mlflow.artifacts.download_artifacts(f"models:/{self.name}/{version}")
        state = next(Path(local).rglob("model_state.pt"))
        return state.read_bytes()


@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion gate."""

    promote: bool
    reason: str
    comparisons: dict[str, dict[str, float]]

    def describe(self) -> str:
        rows = ", ".join(f"{k} {v['candidate']:.4f} vs {v['champion']:.4f}" for k, v in self.comparisons.items())
        return f"{'PROMOTED' if self.promote else 'BLOCKED'}: {self.reason}" + (f" ({rows})" if rows else "")


def decide_promotion(candidate: Mapping[str, float], champion: Mapping[str, float] | None,
                     tolerance: float) -> Decision:
    """Promote only if every task metric of ``candidate`` >= champion's - ``tolerance``.

    Both are held-out metrics on the same examples (``ctr_auc``, ``l2r_ndcg10``, ...). A
    metric the champion has but the candidate lacks (a dropped task) blocks the promotion;
    metrics undefined (NaN) for the champion are not compared.
    """
    if champion is None:
        return Decision(True, "no current champion", {})
    comparisons: dict[str, dict[str, float]] = {}
    worse, missing = [], []
    for name in GATED_METRICS:
        old = champion.get(name)
        if old is None or (isinstance(old, float) and math.isnan(old)):
            continue
        new = candidate.get(name)
        if new is None or math.isnan(new):
            missing.append(name)
            continue
        comparisons[name] = {"candidate": float(new), "champion": float(old), "delta": float(new) - float(old)}
        if new < old - tolerance:
            worse.append(f"{name} {new:.4f} < {old:.4f} - {tolerance}")
    if missing:
        return Decision(False, f"candidate lacks {', '.join(missing)} that the champion has", comparisons)
    if worse:
        return Decision(False, "worse than the champion: " + "; ".join(worse), comparisons)
    return Decision(True, f"every task metric within {tolerance} of the champion or better", comparisons)
