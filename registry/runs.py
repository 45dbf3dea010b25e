"""What a training run logs, and the promotion step, written against the :class:`Tracker` interface."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from registry import plots
from registry.models import Decision, ModelRegistry
from registry.tracking import Tracker

if TYPE_CHECKING:
    from training.trainer import TrainResult

logger = logging.getLogger(__name__)


def log_training(tracker: Tracker, result: "TrainResult", params: Mapping[str, Any],
                 config: Mapping[str, Any], lineage: Mapping[str, Any], time_edges_s: list[int]) -> None:
    """Params, resolved config, per-step training losses, the validation curve (``valid_*`` at the step
    of each scoring), the selected step and its validation metrics (``selected_*``), statistics /
    encoding metadata and the figures (learning curves, attention by behaviour type × age)."""
    tracker.log_params(params)
    tracker.log_dict(config, "config/resolved_config.json")
    tracker.log_dict(lineage, "lineage/inputs_stats_encoding.json")
    for row in result.steps:
        step = int(row["step"])
        tracker.log_metrics({k: v for k, v in row.items() if k not in ("step", "epoch")}, step=step)
    for row in result.evals:
        tracker.log_metrics({k: v for k, v in row.items() if k not in ("step",)}, step=int(row["step"]))
    if result.selected:
        tracker.log_metrics({f"selected_{k}": v for k, v in result.selected.items()})
    tracker.log_metrics({"train_samples": float(result.train_samples), "train_rows": float(result.train_rows),
                         "train_seconds": result.train_seconds,
                         "train_samples_per_second": result.train_samples / max(result.train_seconds, 1e-9)})
    tracker.log_dict({"evals": result.evals, "selected": result.selected, "stopped_early": result.stopped_early},
                     "selection/validation_curve.json")
    tracker.log_dict({"mean_relative_weight": result.attention_mean, "counts": result.attention_counts,
                      "rows": "behaviour index (2 click, 3 fav, 4 cart, 5 buy)",
                      "columns": "age bucket index (1..len(edges)+1)", "edges_s": time_edges_s},
                     "analysis/attention_by_behaviour_and_age.json")
    if result.steps or result.evals:
        tracker.log_figure(plots.learning_curves(result.steps, result.evals, result.selected.get("step")),
                           "plots/learning_curves.png")
    if result.attention_mean:
        tracker.log_figure(plots.attention_heatmap(result.attention_mean, result.attention_counts, time_edges_s),
                           "plots/attention_by_behaviour_and_age.png")


def log_test(tracker: Tracker, test: Mapping[str, float], prefix: str = "test_") -> None:
    """The test split's metrics of the selected model (scored once per run)."""
    tracker.log_metrics({f"{prefix}{k}": v for k, v in test.items()})


def promote(tracker: Tracker, registry: ModelRegistry, version: str, decision: Decision,
            champion_version: str | None, auto_promote: bool) -> None:
    """Log the gate's decision with every interval, and move the alias if it passes."""
    tracker.log_dict({"candidate_version": version, "champion_version": champion_version,
                      "promote": decision.promote, "reason": decision.reason,
                      "intervals": decision.comparisons, "confidence": decision.confidence_label},
                     "promotion/decision.json")
    tracker.set_tags({"promotion.decision": "promoted" if decision.promote and auto_promote else
                      ("blocked" if not decision.promote else "eligible"),
                      "promotion.reason": decision.reason[:4000],
                      "promotion.champion_version": champion_version or "none"})
    for name, c in decision.comparisons.items():
        tracker.log_metrics({f"champion_test_{name}": c["champion"], f"gate_delta_{name}": c["delta"],
                             f"gate_low_{name}": c["low"], f"gate_high_{name}": c["high"]})
    if decision.promote and auto_promote:
        registry.set_champion(version)
        logger.info("version %s is now '%s'", version, registry.alias)
    elif not decision.promote:
        logger.warning("promotion of version %s blocked: %s", version, decision.reason)
