"""What a training run logs, and the promotion step, written against the :class:`Tracker` interface."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from registry import plots
from registry.models import Decision, GATED_METRICS, ModelRegistry, decide_promotion
from registry.tracking import Tracker

if TYPE_CHECKING:
    from training.trainer import TrainResult

logger = logging.getLogger(__name__)


def holdout_metrics(epoch_row: Mapping[str, float]) -> dict[str, float]:
    """``holdout_ctr_auc`` ... of an epoch row -> ``ctr_auc`` ..."""
    return {k[len("holdout_"):]: float(v) for k, v in epoch_row.items() if k.startswith("holdout_")}


def log_training(tracker: Tracker, result: "TrainResult", params: Mapping[str, Any],
                 config: Mapping[str, Any], lineage: Mapping[str, Any], time_edges_s: list[int]) -> None:
    """Params, resolved config, per-step and per-epoch metrics, statistics / encoding metadata
    and the figures (learning curves, attention by behaviour type × age)."""
    tracker.log_params(params)
    tracker.log_dict(config, "config/resolved_config.json")
    tracker.log_dict(lineage, "lineage/inputs_stats_encoding.json")
    for row in result.steps:
        step = int(row["step"])
        tracker.log_metrics({k: v for k, v in row.items() if k not in ("step", "epoch")}, step=step)
    for row in result.epochs:
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    tracker.log_metrics({"train_samples": float(result.train_samples),
                         "train_samples_per_second": result.train_samples / max(result.train_seconds, 1e-9)})
    tracker.log_dict({"mean_relative_weight": result.attention_mean, "counts": result.attention_counts,
                      "rows": "behaviour index (2 click, 3 fav, 4 cart, 5 buy)",
                      "columns": "age bucket index (1..len(edges)+1)", "edges_s": time_edges_s},
                     "analysis/attention_by_behaviour_and_age.json")
    if result.steps or result.epochs:
        tracker.log_figure(plots.learning_curves(result.steps, result.epochs), "plots/learning_curves.png")
    if result.attention_mean:
        tracker.log_figure(plots.attention_heatmap(result.attention_mean, result.attention_counts, time_edges_s),
                           "plots/attention_by_behaviour_and_age.png")


def promote(tracker: Tracker, registry: ModelRegistry, version: str, candidate: Mapping[str, float],
            champion: Mapping[str, float] | None, champion_version: str | None, tolerance: float,
            auto_promote: bool) -> Decision:
    """Apply the promotion gate, log the decision and the numbers, and move the alias if it passes."""
    decision = decide_promotion(candidate, champion, tolerance)
    tracker.log_dict({"candidate_version": version, "champion_version": champion_version,
                      "promote": decision.promote, "reason": decision.reason, "tolerance": tolerance,
                      "candidate": {k: candidate.get(k) for k in GATED_METRICS},
                      "champion": {k: champion.get(k) for k in GATED_METRICS} if champion else None,
                      "comparisons": decision.comparisons}, "promotion/decision.json")
    tracker.set_tags({"promotion.decision": "promoted" if decision.promote and auto_promote else
                      ("blocked" if not decision.promote else "eligible"),
                      "promotion.reason": decision.reason[:4000],
                      "promotion.champion_version": champion_version or "none"})
    if champion:
        tracker.log_metrics({f"champion_{k}": v for k, v in champion.items() if k in GATED_METRICS})
    if decision.promote and auto_promote:
        registry.set_champion(version)
        logger.info("version %s is now '%s'", version, registry.alias)
    elif not decision.promote:
        logger.warning("promotion of version %s blocked: %s", version, decision.reason)
    return decision
