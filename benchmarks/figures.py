"""The report's figures, drawn from the results JSON files the benchmarks write (never from a run).

    .venv/bin/python -m benchmarks.figures      # every figure whose results file exists

Each figure is a pure function of one results file, so ``make report`` redraws them all without
training anything:

* ``<comparison>_curves.png`` (``comparison.json``, ``taobao.json``): the learning curves on the
  validation day, i.e. each validation scoring's metrics against the epoch, as the mean over the
  seeds of the DUPN ablations and the neural baselines; the test day is never plotted, it is
  scored once.
* ``transfer_curves.png`` (``transfer.json``): the transfer methods' validation AUC against their
  training time, as in the paper's transfer figure (mean over the seeds at each epoch).
* ``taobao_attention.png`` (``taobao_attention.json``): mean attention by behaviour type × age.
* ``mmoe_synthetic.png`` (``mmoe_synthetic.json``): test loss against task correlation.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from benchmarks.common import ROOT

RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("figures")

# rows drawn in a comparison's learning curves, in this order, when the file has them
CURVE_ROWS = ("dupn_all", "dupn_bpatt", "dupn_bplstm", "dupn_nobp", "wide_deep", "cnn_max", "dssm")
CURVE_METRICS = (("valid_ctr_auc", "CTR AUC"), ("valid_l2r_auc", "L2R AUC"), ("valid_follow_auc", "follow AUC"),
                 ("valid_ppp_accuracy", "PPP accuracy (unseen users)"), ("valid_ctcvr_auc", "CTCVR AUC"),
                 ("valid_l2r_ndcg10", "L2R NDCG@10"))
TRANSFER_LABELS = {"rt": "RT (representation transfer)", "ft": "FT (fine-tuning)", "rs": "RS (from scratch)",
                   "ra": "RA (all tasks retrained)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def mean_curve(runs: Sequence[Mapping[str, Any]], metric: str, x: str = "epoch_fraction") \
        -> tuple[list[float], list[float]]:
    """(x, mean metric) over the seeds' validation scorings, at each scoring index every seed reached
    (a run stopped early ends the curve there)."""
    evals = [[e for e in r.get("evals", []) if _finite(e.get(metric))] for r in runs]
    n = min((len(e) for e in evals), default=0)
    xs = [sum(e[i][x] for e in evals) / len(evals) for i in range(n)]
    ys = [sum(e[i][metric] for e in evals) / len(evals) for i in range(n)]
    return xs, ys


def comparison_curves(payload: Mapping[str, Any], rows: Sequence[str] = CURVE_ROWS) -> Any:
    """The validation learning curves of a comparison results file (``bench_comparison``)."""
    by_key = {r["key"]: r for r in payload["rows"]}
    keys = [k for k in rows if k in by_key and any(run.get("evals") for run in by_key[k]["runs"])]
    metrics = [(m, name) for m, name in CURVE_METRICS
               if any(mean_curve(by_key[k]["runs"], m)[0] for k in keys)][:4]
    if not keys or not metrics:
        raise ValueError("the comparison file has no validation curves of the rows "
                         f"{', '.join(rows)}; run them with benchmarks/bench_comparison.py")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    seeds = max(len(by_key[k]["runs"]) for k in keys)
    for ax, (metric, name) in zip(axes[0], metrics):
        for k in keys:
            xs, ys = mean_curve(by_key[k]["runs"], metric)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=by_key[k]["label"].split(" (")[0])
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {name}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Learning curves on the validation day (mean of up to {seeds} seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def transfer_curves(payload: Mapping[str, Any]) -> Any:
    """Validation AUC against training time of each transfer method (``bench_transfer``)."""
    methods: dict[str, list[list[Mapping[str, float]]]] = {}
    for run in payload["runs"]:
        for m, curve in (run.get("curves") or {}).items():
            methods.setdefault(m, []).append(curve)
    if not methods:
        raise ValueError("transfer.json has no per-epoch curves (written by benchmarks/bench_transfer.py since "
                         "2026-12-02); run it again")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, curves in methods.items():
        n = min(len(c) for c in curves)
        xs = [sum(c[i]["elapsed_seconds"] for c in curves) / len(curves) for i in range(n)]
        ys = [sum(c[i]["valid_auc"] for c in curves) / len(curves) for i in range(n)]
        ax.plot(xs, ys, marker="o", label=TRANSFER_LABELS.get(m, m))
    oracle = (payload.get("oracle_test_auc") or {}).get("mean")
    if _finite(oracle):
        ax.axhline(oracle, color="grey", linestyle="--", linewidth=1, label="oracle (test rows)")
    ax.set_xscale("log")
    ax.set_xlabel("training time, s (log scale)")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"Transfer: AUC against training time (mean of {len(payload['runs'])} seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_figure(payload: Mapping[str, Any]) -> Any:
    """The attention heatmap of ``scripts.taobao --attention-out``'s JSON."""
    from registry import plots

    a = payload["analysis"]
    if not a.get("mean_relative_weight"):
        raise ValueError("the attention analysis is empty: the full training run logged none")
    return plots.attention_heatmap(a["mean_relative_weight"], a["counts"], a["edges_s"])


def _mmoe(json_path: Path, png: Path) -> None:
    from benchmarks import bench_mmoe_synthetic as mmoe

    mmoe.plot(mmoe.load_runs(json.loads(json_path.read_text())), png)


def save(fig: Any, png: Path) -> Path:
    """Write ``fig`` to ``png`` and release it (pyplot keeps every open figure)."""
    fig.savefig(png, dpi=110)
    _pyplot().close(fig)
    return png


Drawer = Callable[[Mapping[str, Any]], Any]
# results JSON -> the figure drawn from it
FIGURES: dict[str, tuple[str, Drawer]] = {
    "comparison.json": ("comparison_curves.png", comparison_curves),
    "comparison_layout.json": ("comparison_layout_curves.png", comparison_curves),
    "comparison_priors.json": ("comparison_priors_curves.png", comparison_curves),
    "comparison_probes.json": ("comparison_probes_curves.png", comparison_curves),
    "comparison_wd.json": ("comparison_wd_curves.png", comparison_curves),
    "comparison_features.json": ("comparison_features_curves.png", comparison_curves),
    "comparison_hybrid.json": ("comparison_hybrid_curves.png", comparison_curves),
    "comparison_pieces.json": ("comparison_pieces_curves.png", comparison_curves),
    "comparison_detached.json": ("comparison_detached_curves.png", comparison_curves),
    "taobao.json": ("taobao_curves.png", comparison_curves),
    "transfer.json": ("transfer_curves.png", transfer_curves),
    "transfer_hybrid.json": ("transfer_hybrid_curves.png", transfer_curves),
    "transfer_detached.json": ("transfer_detached_curves.png", transfer_curves),
    "taobao_attention.json": ("taobao_attention.png", attention_figure),
}


def draw(json_path: Path) -> Path:
    """Draw the figure of one results JSON (a name of :data:`FIGURES` or ``mmoe_synthetic.json``) next to
    it; returns the PNG's path."""
    if json_path.name == "mmoe_synthetic.json":
        png = json_path.parent / "mmoe_synthetic.png"
        _mmoe(json_path, png)
        return png
    name, drawer = FIGURES[json_path.name]
    return save(drawer(json.loads(json_path.read_text())), json_path.parent / name)


def draw_all(results: Path = RESULTS) -> list[Path]:
    """Every figure whose results file exists in ``results``; a file without the data a figure needs is
    skipped with a log line naming the command that writes it."""
    written = []
    for name in [*FIGURES, "mmoe_synthetic.json"]:
        path = results / name
        if not path.is_file():
            continue
        try:
            written.append(draw(path))
        except ValueError as e:
            logger.warning("%s: no figure: %s", name, e)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for png in draw_all(args.results):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
