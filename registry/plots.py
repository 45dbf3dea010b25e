"""Figures logged with every training run: learning curves and the paper's attention analysis."""
from __future__ import annotations

import math
from typing import Any, Sequence

from features.encoding import BEHAVIOR_INDEX


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(steps: Sequence[dict[str, float]], evals: Sequence[dict[str, float]],
                    selected_step: float | None = None) -> Any:
    """Per-task training loss by step (left) and validation metrics by step (right), with the step
    model selection chose."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [s["step"] for s in steps]
    for key in sorted({k for s in steps for k in s if k.startswith("loss_")}):
        ax1.plot(xs, [s.get(key, math.nan) for s in steps], label=key[len("loss_"):])
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (per task)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ex = [e["step"] for e in evals]
    shown = ("valid_ctr_auc", "valid_cvr_auc", "valid_ctcvr_auc", "valid_l2r_auc", "valid_follow_auc",
             "valid_ppp_accuracy", "selection_score")
    for key in [k for k in shown if any(k in e for e in evals)]:
        ax2.plot(ex, [e.get(key, math.nan) for e in evals], marker="o", label=key.replace("valid_", ""))
    if selected_step is not None:
        ax2.axvline(selected_step, color="grey", linestyle="--", linewidth=1, label="selected")
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation metric")
    if evals or selected_step is not None:
        ax2.legend(fontsize=8)
    else:  # incremental runs train one day without a validation split
        ax2.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    return fig


def attention_heatmap(mean: Sequence[Sequence[float | None]], counts: Sequence[Sequence[int]],
                      time_edges_s: Sequence[int]) -> Any:
    """Mean attention (relative to uniform) per behaviour type × age bucket, as in the paper."""
    plt = _pyplot()
    names = {v: k for k, v in BEHAVIOR_INDEX.items()}
    rows = [i for i in sorted(names)]
    labels = [_edge_label(e) for e in time_edges_s] + ["older"]
    cols = list(range(1, len(labels) + 1))
    grid = [[_cell(mean[r][c], counts[r][c]) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 3.5))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [f"≤{x}" if x != "older" else x for x in labels], rotation=30)
    ax.set_yticks(range(len(rows)), [names[r] for r in rows])
    ax.set_xlabel("behaviour age")
    ax.set_title("attention weight × sequence length (1 = uniform)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def _cell(value: float | None, count: int) -> float:
    return float(value) if value is not None and count > 0 else math.nan


def _edge_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def attention_table(mean: Sequence[Sequence[float | None]], counts: Sequence[Sequence[int]],
                    time_edges_s: Sequence[int]) -> list[str]:
    """The heatmap's numbers as a markdown table: one row per behaviour type, one column per age bucket,
    each cell ``mean relative weight (behaviours)``; ``–`` where no behaviour fell."""
    names = {v: k for k, v in BEHAVIOR_INDEX.items()}
    labels = [f"≤ {_edge_label(e)}" for e in time_edges_s] + ["older"]
    cols = list(range(1, len(labels) + 1))
    lines = ["| behaviour | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for r in sorted(names):
        cells = []
        for c in cols:
            v = _cell(mean[r][c], counts[r][c])
            cells.append("–" if math.isnan(v) else f"{v:.2f} ({counts[r][c]:,})")
        lines.append(f"| {names[r]} | " + " | ".join(cells) + " |")
    return lines
