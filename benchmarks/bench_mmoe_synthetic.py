"""The synthetic study of MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", section 3.2): two regression tasks whose relatedness is set by a
correlation score p, learned by the platform's multi-task designs (``training/model.py``: shared-bottom,
MMoE, PLE) under one protocol.

    .venv/bin/python -m benchmarks.bench_mmoe_synthetic                                # the default grid
    .venv/bin/python -m benchmarks.bench_mmoe_synthetic --seeds 0 1 2 --correlations 0.5 1.0

Data (the paper's section 3.2): d = 100; orthogonal unit vectors u1, u2; w1 = c u1,
w2 = c (p u1 + sqrt(1 - p^2) u2), so cos(w1, w2) = p; x ~ N(0, I_d);
y_i = w_i'x + sum_{j=1..m} sin(alpha_j w_i'x + beta_j) + eps_i with c = 1, m = 10, alpha_j, beta_j ~ N(0, 1)
shared by the two tasks and eps_i ~ N(0, 0.01) (variance 0.01). Everything is drawn from
``numpy.random.default_rng(seed)`` in a fixed order that does not depend on p, so one seed gives the same
x, alpha, beta and noise at every p (the comparison across p is paired).

Models: the mixer of each design, a tower per task (one hidden ReLU layer of 8 units, then a linear output),
sizes after the paper's synthetic experiments: MMoE has 8 single-layer experts of 16 units; the shared bottom is one
hidden ReLU layer in front of ``SharedBottom`` and PLE has two levels of 4 shared and 2 per-task experts,
their widths chosen so that each model's parameter count is the closest to MMoE's.

Protocol: per (seed, p) one data set split into train / validation / test; Adam on the sum of the two tasks'
MSE (fixed weights 1 and 1) in shuffled mini-batches; validation loss after every epoch, the best epoch's
weights kept, training stopped after ``--patience`` epochs without improvement or at ``--max-epochs``; the
test split is scored once, with the kept weights. One torch thread.

Writes ``mmoe_synthetic.md``, ``mmoe_synthetic.json`` and ``mmoe_synthetic.png`` to ``--out-dir``
(default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import ROOT, commit, machine
from training import evaluation as ev
from training.model import MMoE, PLE, SharedBottom, TaskMixer

logger = logging.getLogger("bench_mmoe_synthetic")

DIM = 100  # input dimension d
SCALE = 1.0  # c
SINE_TERMS = 10  # m
NOISE_VAR = 0.01  # variance of eps_i
HEADS = ("task1", "task2")
MODELS = ("shared_bottom", "mmoe", "ple")
LABELS = {"shared_bottom": "Shared-Bottom", "mmoe": "MMoE", "ple": "PLE"}
TOWER_HIDDEN = 8
NUM_EXPERTS = 8  # MMoE's experts
MMOE_EXPERT_DIM = 16
PLE_LEVELS, PLE_SHARED, PLE_TASK = 2, 4, 2  # 4 shared + 2 x 2 own experts per level: 8, as MMoE


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticTasks:
    """Generated examples of the two tasks. N examples, d inputs, m sine terms."""

    x: np.ndarray  # (N, d) inputs
    y: np.ndarray  # (N, 2) labels of task1, task2
    clean: np.ndarray  # (N, 2) the labels without their noise eps
    weights: np.ndarray  # (2, d) w1, w2
    alpha: np.ndarray  # (m,)
    beta: np.ndarray  # (m,)
    correlation: float  # p = cos(w1, w2)


def make_tasks(n: int, correlation: float, seed: int, dim: int = DIM, scale: float = SCALE,
               sine_terms: int = SINE_TERMS, noise_var: float = NOISE_VAR) -> SyntheticTasks:
    """``n`` examples of the paper's two regression tasks whose weight vectors have cosine ``correlation``.

    Draw order (fixed, independent of ``correlation``): u1, u2 (orthonormalised standard normal (d, 2)),
    alpha (m,), beta (m,), x (n, d), eps (n, 2); so two calls with the same seed and ``n`` but different
    correlations share u1, u2, x, alpha, beta and eps.
    """
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be a cosine in [-1, 1], got {correlation}")
    if n < 1 or dim < 2:
        raise ValueError(f"need n >= 1 examples and dim >= 2 inputs (two orthogonal vectors), got n={n}, dim={dim}")
    if noise_var < 0 or sine_terms < 0:
        raise ValueError(f"noise_var and sine_terms must be >= 0, got {noise_var}, {sine_terms}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    alpha = rng.standard_normal(sine_terms)
    beta = rng.standard_normal(sine_terms)
    x = rng.standard_normal((n, dim))
    eps = rng.normal(0.0, math.sqrt(noise_var), (n, 2))
    w = np.stack([scale * u1, scale * (correlation * u1 + math.sqrt(max(0.0, 1.0 - correlation ** 2)) * u2)])
    z = x @ w.T  # (n, 2): w_i'x
    clean = z + np.sin(z[:, :, None] * alpha + beta).sum(axis=-1)
    return SyntheticTasks(x=x, y=clean + eps, clean=clean, weights=w, alpha=alpha, beta=beta,
                          correlation=float(correlation))


Split = tuple[Tensor, Tensor]  # x (N, d) float32, y (N, 2) float32


def split(tasks: SyntheticTasks, sizes: Sequence[int]) -> dict[str, Split]:
    """The first ``sizes[0]`` rows as ``train``, the next ``sizes[1]`` as ``valid``, the next ``sizes[2]``
    as ``test``, as float32 tensors."""
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"sizes must be three positive row counts (train, valid, test), got {list(sizes)}")
    if sum(sizes) > len(tasks.x):
        raise ValueError(f"sizes {list(sizes)} need {sum(sizes)} rows; the data has {len(tasks.x)}: "
                         "generate more with make_tasks(n=sum(sizes), ...)")
    x = torch.from_numpy(tasks.x).float()
    y = torch.from_numpy(tasks.y).float()
    bounds = np.cumsum([0, *sizes])
    return {name: (x[a:b], y[a:b]) for name, a, b in zip(("train", "valid", "test"), bounds[:-1], bounds[1:])}


# ---------------------------------------------------------------------- models
class TowerModel(nn.Module):
    """``bottom`` (B, d) -> (B, R), a :class:`TaskMixer` over R, and one tower per head on the mixer's
    (B, out_dim): Linear(out_dim, hidden), ReLU, Linear(hidden, 1). Returns (B, T) in ``mixer.heads`` order."""

    def __init__(self, mixer: TaskMixer, bottom: nn.Module | None = None, tower_hidden: int = TOWER_HIDDEN) -> None:
        super().__init__()
        self.bottom = bottom if bottom is not None else nn.Identity()
        self.mixer = mixer
        self.towers = nn.ModuleDict({h: nn.Sequential(nn.Linear(mixer.out_dim, tower_hidden), nn.ReLU(),
                                                      nn.Linear(tower_hidden, 1)) for h in mixer.heads})

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, d). Returns (B, T) predictions."""
        per_head = self.mixer(self.bottom(x))
        return torch.cat([self.towers[h](per_head[h]) for h in self.mixer.heads], dim=1)


def build_model(kind: str, width: int, in_dim: int = DIM, heads: tuple[str, ...] = HEADS) -> TowerModel:
    """The model ``kind`` with ``width`` = the shared bottom's hidden units (shared_bottom) or each
    expert's units (mmoe, ple)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if kind == "shared_bottom":
        return TowerModel(SharedBottom(width, heads), nn.Sequential(nn.Linear(in_dim, width), nn.ReLU()))
    if kind == "mmoe":
        return TowerModel(MMoE(in_dim, heads, NUM_EXPERTS, width))
    if kind == "ple":
        return TowerModel(PLE(in_dim, heads, PLE_LEVELS, PLE_SHARED, PLE_TASK, width))
    raise ValueError(f"unknown model '{kind}'; choose one of {', '.join(MODELS)}")


def parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_widths(in_dim: int = DIM) -> dict[str, int]:
    """The width of each model: MMoE's is the paper's (16 units per expert); the shared bottom's hidden
    units and PLE's expert units are those whose parameter count is the closest to MMoE's."""
    target = parameters(build_model("mmoe", MMOE_EXPERT_DIM, in_dim))
    widths = {"mmoe": MMOE_EXPERT_DIM}
    for kind in ("shared_bottom", "ple"):
        best, width = (math.inf, 1), 1
        while True:
            gap = parameters(build_model(kind, width, in_dim)) - target
            best = min(best, (abs(gap), width))
            if gap >= 0:
                break
            width += 1
        widths[kind] = best[1]
    return widths


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    """How every model is trained."""

    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 50
    patience: int = 8


@dataclass
class RunResult:
    """One trained model scored once on test: per-task test MSE and how the epoch was chosen."""

    model: str
    correlation: float
    seed: int
    width: int
    parameters: int
    test_mse: dict[str, float]
    valid_loss: float  # best validation loss (sum of the task MSEs): the one selected
    best_epoch: int  # 1-based
    epochs_run: int
    stopped_early: bool
    seconds: float
    valid_history: list[float]

    @property
    def test_loss(self) -> float:
        """Sum of the tasks' test MSE."""
        return float(sum(self.test_mse.values()))


def task_mse(model: nn.Module, data: Split, batch_size: int = 4096) -> Tensor:
    """Mean squared error per task (T,) of ``model`` on ``data``, in eval mode, without gradients."""
    x, y = data
    model.eval()
    total = torch.zeros(y.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            total += ((model(x[i:i + batch_size]) - y[i:i + batch_size]) ** 2).sum(0).double()
    return total / len(x)


def mean_predictor_mse(train: Split, other: Split) -> Tensor:
    """Per-task MSE (T,) on ``other`` of predicting the training labels' mean."""
    return ((other[1].double() - train[1].double().mean(0)) ** 2).mean(0)


def train_and_test(model: nn.Module, data: dict[str, Split], settings: TrainSettings, seed: int) -> \
        tuple[Tensor, float, int, list[float]]:
    """Train ``model`` on ``data['train']``, keep the weights of its best validation epoch, score
    ``data['test']`` once. Returns test MSE per task (T,), best validation loss, best epoch (1-based)
    and the validation loss of every epoch."""
    if settings.max_epochs < 1 or settings.patience < 1 or settings.batch_size < 1:
        raise ValueError(f"max_epochs, patience and batch_size must be >= 1, got {settings}")
    x, y = data["train"]
    shuffle = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[float] = []
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        for i in range(0, len(x), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            loss = ((model(x[idx]) - y[idx]) ** 2).mean(0).sum()  # fixed weights: 1 per task
            opt.zero_grad()
            loss.backward()
            opt.step()
        valid = float(task_mse(model, data["valid"]).sum())
        history.append(valid)
        if valid < best_loss:
            best_loss, best_epoch, best_state = valid, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return task_mse(model, data["test"]), best_loss, best_epoch, history


def run_one(kind: str, width: int, data: dict[str, Split], correlation: float, seed: int,
            settings: TrainSettings) -> RunResult:
    """Build ``kind`` (initialised from ``torch.manual_seed(seed)``), train, select and test it."""
    torch.manual_seed(seed)
    model = build_model(kind, width, in_dim=int(data["train"][0].shape[1]))
    started = time.perf_counter()
    test, valid, best_epoch, history = train_and_test(model, data, settings, seed)
    return RunResult(model=kind, correlation=correlation, seed=seed, width=width, parameters=parameters(model),
                     test_mse={h: float(v) for h, v in zip(HEADS, test)}, valid_loss=valid, best_epoch=best_epoch,
                     epochs_run=len(history), stopped_early=len(history) < settings.max_epochs,
                     seconds=time.perf_counter() - started, valid_history=history)


# ---------------------------------------------------------------------- findings
@dataclass(frozen=True)
class Finding:
    """One of the paper's claims checked on the results."""

    claim: str
    holds: bool  # the claim holds in the means
    detail: str
    decisive: bool = False  # ... and every difference it rests on is beyond noise

    @property
    def verdict(self) -> str:
        if not self.holds:
            return "does not hold"
        return "holds beyond noise" if self.decisive else "holds in the means, within noise"


def per_seed_loss(results: Sequence[RunResult]) -> dict[tuple[str, float], dict[int, float]]:
    """(model, p) -> seed -> test loss."""
    out: dict[tuple[str, float], dict[int, float]] = {}
    for r in results:
        out.setdefault((r.model, r.correlation), {})[r.seed] = r.test_loss
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> ev.Summary:
    """Per-seed ``a - b`` over the seeds in both. One seed is one draw of the data and the initialisation,
    shared by every p and model, so the difference is paired."""
    return ev.summarize(a[seed] - b[seed] for seed in a if seed in b)


def beyond_noise(diff: ev.Summary) -> bool:
    """A paired difference is beyond noise when |mean| exceeds twice its standard error, std / sqrt(n)
    (the rule of ``training.evaluation.within_noise`` applied to the per-seed differences)."""
    return diff.n >= 2 and abs(diff.mean) > 2.0 * diff.std / math.sqrt(diff.n)


def _noise(diff: ev.Summary) -> str:
    return "beyond noise" if beyond_noise(diff) else "within noise"


def seed_drops(results: Sequence[RunResult], kind: str) -> dict[int, float]:
    """seed -> test loss of ``kind`` at the lowest p minus at the highest p of ``results``."""
    lo, hi = min(r.correlation for r in results), max(r.correlation for r in results)
    loss = per_seed_loss(results)
    at_lo, at_hi = loss.get((kind, lo), {}), loss.get((kind, hi), {})
    return {seed: at_lo[seed] - at_hi[seed] for seed in at_lo if seed in at_hi}


def paired_deltas(results: Sequence[RunResult]) -> dict[str, ev.Summary]:
    """model -> summary over the seeds of its test loss at the lowest p minus at the highest p."""
    drops = {kind: seed_drops(results, kind) for kind in dict.fromkeys(r.model for r in results)}
    return {kind: ev.summarize(d.values()) for kind, d in drops.items() if d}


def falls_with_correlation(results: Sequence[RunResult]) -> Finding:
    """(a) every model's mean test loss falls at each step up in p (each step's per-seed difference is
    reported with whether it is beyond noise)."""
    loss = per_seed_loss(results)
    lines, holds, sure = [], True, True
    for kind in dict.fromkeys(r.model for r in results):
        ps = sorted(p for k, p in loss if k == kind)
        steps = []
        for lo, hi in zip(ps[:-1], ps[1:]):
            a, b = ev.summarize(loss[(kind, lo)].values()), ev.summarize(loss[(kind, hi)].values())
            diff = paired(loss[(kind, lo)], loss[(kind, hi)])
            falls = diff.mean > 0
            holds &= falls
            sure &= falls and beyond_noise(diff)
            steps.append(f"p {lo:g}→{hi:g}: {a.mean:.4f}→{b.mean:.4f} {'falls' if falls else '**does not fall**'} "
                         f"(per-seed drop {diff.describe()}, {_noise(diff)})")
        lines.append(f"{LABELS.get(kind, kind)}: " + "; ".join(steps))
    return Finding("(a) every model's test loss falls as p rises", holds, "  \n".join(lines), holds and sure)


def degrades_most(results: Sequence[RunResult], worst: str = "shared_bottom") -> Finding:
    """(b) ``worst`` has the largest mean test-loss increase from the highest to the lowest p."""
    deltas = paired_deltas(results)
    if worst not in deltas or len(deltas) < 2:
        raise ValueError(f"need runs of {worst} and another model at two correlations, got {sorted(deltas)}")
    lo, hi = min(r.correlation for r in results), max(r.correlation for r in results)
    others = {k: v for k, v in deltas.items() if k != worst}
    runner_up = max(others, key=lambda k: others[k].mean)
    holds = deltas[worst].mean > others[runner_up].mean
    gap = paired(seed_drops(results, worst), seed_drops(results, runner_up))
    name, other = LABELS.get(worst, worst), LABELS.get(runner_up, runner_up)
    detail = (f"test loss at p = {lo:g} minus at p = {hi:g}, per seed: "
              + ", ".join(f"{LABELS.get(k, k)} {v.describe()}" for k, v in deltas.items())
              + f". {name} minus the largest other ({other}): {gap.describe()}, {_noise(gap)}.")
    return Finding(f"(b) {name} degrades most as p falls", holds, detail, holds and beyond_noise(gap))


# ---------------------------------------------------------------------- reporting
def summaries(results: Sequence[RunResult], key: Callable[[RunResult], float]) \
        -> dict[str, dict[float, ev.Summary]]:
    """model -> p -> summary of ``key`` over the seeds."""
    out: dict[str, dict[float, ev.Summary]] = {}
    for kind in dict.fromkeys(r.model for r in results):
        ps = sorted({r.correlation for r in results if r.model == kind})
        out[kind] = {p: ev.summarize(key(r) for r in results if r.model == kind and r.correlation == p) for p in ps}
    return out


def _task_loss(head: str) -> Callable[[RunResult], float]:
    return lambda r: r.test_mse[head]


def markdown(results: Sequence[RunResult], baseline: dict[float, ev.Summary], findings: Sequence[Finding],
             context: dict[str, Any]) -> str:
    """The results page: settings, the test-loss table, per-task detail and the paper's findings."""
    ps = sorted({r.correlation for r in results})
    total = summaries(results, lambda r: r.test_loss)
    per_task = {h: summaries(results, _task_loss(h)) for h in HEADS}
    epochs = summaries(results, lambda r: r.best_epoch)
    seconds = summaries(results, lambda r: r.seconds)
    params = {r.model: r.parameters for r in results}
    widths = {r.model: r.width for r in results}
    s = context["settings"]
    lines = [
        "# MMoE synthetic study (Ma et al., KDD 2018, §3.2): task correlation vs multi-task design", "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}; date {context['date']}; commit {context['commit']}; wall time "
        f"{context['wall_minutes']:.1f} min, CPU time {context['cpu_minutes']:.1f} min (one torch thread).  ",
        f"Data: the paper's generator, d = {s['dim']}, c = {s['scale']:g}, m = {s['sine_terms']}, α, β ~ N(0, 1) "
        f"shared by the tasks, ε ~ N(0, {s['noise_var']:g}) (variance); per seed one draw of u, α, β, x, ε shared "
        f"by every p (paired); split {s['sizes'][0]:,} train / {s['sizes'][1]:,} validation / "
        f"{s['sizes'][2]:,} test.  ",
        f"Models: a tower per task (ReLU hidden layer of {TOWER_HIDDEN}, linear output) on "
        f"Shared-Bottom (one ReLU layer of {widths.get('shared_bottom', '–')} units), "
        f"MMoE ({NUM_EXPERTS} experts of {widths.get('mmoe', '–')} units, a softmax gate per task), "
        f"PLE ({PLE_LEVELS} levels of {PLE_SHARED} shared + {PLE_TASK} per-task experts of "
        f"{widths.get('ple', '–')} units); widths matched to MMoE's parameter count.  ",
        f"Training: Adam (lr {s['lr']:g}), batch {s['batch_size']}, loss = MSE(task1) + MSE(task2); the epoch "
        f"with the lowest validation loss is kept (patience {s['patience']} epochs, at most {s['max_epochs']}); "
        "test scored once.  ",
        f"Seeds: {', '.join(str(x) for x in context['seeds'])} (the seed draws the data, the initialisation "
        "and the batch order).", "",
        "## Test loss (MSE task1 + MSE task2), mean ± std over the seeds", "",
        "| model | parameters | " + " | ".join(f"p = {p:g}" for p in ps) + " |",
        "|---|---:|" + "---:|" * len(ps)]
    for kind, by_p in total.items():
        lines.append(f"| {LABELS.get(kind, kind)} | {params[kind]:,} | "
                     + " | ".join(by_p[p].describe() if p in by_p else "–" for p in ps) + " |")
    lines.append("| predicting the training mean | 0 | " + " | ".join(baseline[p].describe() for p in ps) + " |")
    floor = f"{2 * s['noise_var']:.4f}"
    lines.append(f"| noise floor (2 × {s['noise_var']:g}) | – | " + " | ".join(floor for _ in ps) + " |")
    lines += ["", "## Per task", "",
              "| model | p | task1 MSE | task2 MSE | sum | epoch chosen | best at cap | train s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    cap = s["max_epochs"]
    for kind in total:
        for p in ps:
            runs = [r for r in results if r.model == kind and r.correlation == p]
            if not runs:
                continue
            lines.append(f"| {LABELS.get(kind, kind)} | {p:g} | {per_task['task1'][kind][p].describe()} | "
                         f"{per_task['task2'][kind][p].describe()} | {total[kind][p].describe()} | "
                         f"{epochs[kind][p].describe(1)} | {sum(r.best_epoch == cap for r in runs)}/{len(runs)} | "
                         f"{seconds[kind][p].describe(1)} |")
    lines += ["", f"*best at cap*: runs whose best validation epoch was the last allowed ({cap}), i.e. still "
              "improving when the cap stopped them; *train s*: wall seconds per run (the machine may be shared).",
              "", "## The paper's findings, checked on these numbers", "",
              "Differences are paired by seed (one seed draws the data and the initialisation, the same for "
              "every p and model) and *within noise* when |mean of the per-seed differences| ≤ 2 standard "
              "errors (std / √n).", ""]
    for f in findings:
        lines += [f"**{f.claim}: {f.verdict}.**  ", f.detail, ""]
    lines += [f"![test loss against p]({context['plot']})"]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[RunResult], path: Path) -> None:
    """Test loss against p, one line per model with ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = summaries(results, lambda r: r.test_loss)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (kind, by_p) in enumerate(total.items()):
        ps = sorted(by_p)
        shift = (i - (len(total) - 1) / 2) * 0.006  # keep the error bars apart
        ax.errorbar([p + shift for p in ps], [by_p[p].mean for p in ps], yerr=[by_p[p].std for p in ps],
                    marker="o", capsize=3, label=LABELS.get(kind, kind))
    ax.set_xlabel("task correlation p = cos(w1, w2)")
    ax.set_ylabel("test loss (MSE task1 + MSE task2)")
    n = len({r.seed for r in results})
    ax.set_title(f"MMoE synthetic study: mean ± std over {n} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--sizes", type=int, nargs=3, default=[10_000, 1_000, 1_000], metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--lr", type=float, default=TrainSettings.lr)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--max-epochs", type=int, default=TrainSettings.max_epochs)
    p.add_argument("--patience", type=int, default=TrainSettings.patience)
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="mmoe_synthetic", help="results file names (<name>.md, .json, .png)")
    p.add_argument("--render", metavar="JSON", type=Path,
                   help="write the results files of a results JSON of this benchmark again from its runs (no training)")
    args = p.parse_args(argv)
    if args.render:
        render(args.render)
        return
    if "shared_bottom" not in args.models or len(args.models) < 2 or len(set(args.correlations)) < 2:
        p.error("the findings need shared_bottom and another model, and at least two correlations")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    settings = TrainSettings(lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
                             patience=args.patience)
    correlations = sorted(set(args.correlations))
    widths = matched_widths()
    logger.info("widths %s, parameters %s", widths,
                {k: parameters(build_model(k, w)) for k, w in widths.items()})
    started, cpu_started = time.time(), time.process_time()
    results: list[RunResult] = []
    baseline: dict[float, list[float]] = {c: [] for c in correlations}
    total = len(args.seeds) * len(correlations) * len(args.models)
    for seed in args.seeds:
        for corr in correlations:
            data = split(make_tasks(sum(args.sizes), corr, seed), args.sizes)
            baseline[corr].append(float(mean_predictor_mse(data["train"], data["test"]).sum()))
            for kind in args.models:
                r = run_one(kind, widths[kind], data, corr, seed, settings)
                results.append(r)
                elapsed = time.time() - started
                eta = elapsed / len(results) * (total - len(results))
                logger.info("run %d/%d %s p=%g seed %d: test loss %.4f (%s), epoch %d of %d, %.1f s; "
                            "elapsed %s, ETA %s", len(results), total, kind, corr, seed, r.test_loss,
                            ", ".join(f"{h} {v:.4f}" for h, v in r.test_mse.items()), r.best_epoch, r.epochs_run,
                            r.seconds, _clock(elapsed), _clock(eta))
    command = ("python -m benchmarks.bench_mmoe_synthetic " +
               " ".join(argv if argv is not None else sys.argv[1:])).strip()
    context: dict[str, Any] = {
        "command": command, "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(),
        "wall_minutes": (time.time() - started) / 60, "cpu_minutes": (time.process_time() - cpu_started) / 60,
        "seeds": args.seeds, "correlations": correlations, "plot": f"{args.name}.png",
        "settings": {**asdict(settings), "sizes": args.sizes, "dim": DIM, "scale": SCALE, "sine_terms": SINE_TERMS,
                     "noise_var": NOISE_VAR, "tower_hidden": TOWER_HIDDEN, "widths": widths},
    }
    write(results, {c: ev.summarize(v) for c, v in baseline.items()}, context, args.out_dir, args.name)


def write(results: Sequence[RunResult], base: dict[float, ev.Summary], context: dict[str, Any], out_dir: Path,
          name: str) -> None:
    """The findings, then ``<name>.json``, ``.png`` and ``.md`` in ``out_dir``."""
    findings = [falls_with_correlation(results), degrades_most(results)]
    total_summary = summaries(results, lambda r: r.test_loss)
    payload = {
        "context": context,
        "test_loss": {k: {f"{c:g}": s.as_dict() for c, s in by_p.items()} for k, by_p in total_summary.items()},
        "mean_predictor_test_loss": {f"{c:g}": s.as_dict() for c, s in base.items()},
        "loss_increase_lowest_to_highest_p": {k: s.as_dict() for k, s in paired_deltas(results).items()},
        "findings": [{**asdict(f), "verdict": f.verdict} for f in findings],
        "runs": [{**asdict(r), "test_loss": r.test_loss} for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1))
    plot(results, out_dir / f"{name}.png")
    text = markdown(results, base, findings, context)
    (out_dir / f"{name}.md").write_text(
        f"<!-- generated by: {context['command']} ({context['date']}, {context['machine']}); do not edit -->\n"
        + text)
    print(text)


def load_runs(payload: dict[str, Any]) -> list[RunResult]:
    """The runs of a results JSON of this benchmark."""
    names = {f.name for f in fields(RunResult)}
    return [RunResult(**{k: v for k, v in run.items() if k in names}) for run in payload["runs"]]


def render(path: Path) -> None:
    """Write the results files of ``path`` (a results JSON of this benchmark) again from its runs: the
    findings and tables are recomputed, the runs and their context (command, date, commit) kept."""
    payload = json.loads(path.read_text())
    results = load_runs(payload)
    base = {float(c): ev.summarize(s["values"])
            for c, s in payload["mean_predictor_test_loss"].items()}
    write(results, base, payload["context"], path.parent, path.stem)


if __name__ == "__main__":
    main()
