"""Task weighting: how per-task losses become the one loss that is back-propagated.

Each strategy is a separate object with the same interface (:class:`TaskWeighting`):

* ``combine(losses, counts)`` -> the total loss (a scalar tensor);
* ``weights()`` -> the current weight of every task, for logging;
* ``main_parameters()`` -> parameters the model's optimiser should train (uncertainty
  weighting's log-variances; none for fixed weights and GradNorm);
* ``before_backward(losses, counts)`` -> called after ``combine`` and before
  ``total.backward()``; GradNorm updates its weights there with its own optimiser.

``counts`` maps each task to its number of rows in the batch; a task with no row
contributes nothing and its weight is not updated in that step.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.config import WeightingConfig
from training.losses import LOSS_NAMES

logger = logging.getLogger(__name__)


class TaskWeighting(nn.Module):
    """Base class: the task names and the shared plumbing. See the module docstring."""

    def __init__(self, task_names: Iterable[str], known: Iterable[str] = LOSS_NAMES) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.known = tuple(known)
        if not self.task_names:
            raise ValueError("task weighting needs at least one task")
        unknown = [t for t in self.task_names if t not in self.known]
        if unknown:
            raise ValueError(f"unknown task (loss) names {unknown}; known: {list(self.known)}")

    def _check(self, losses: Mapping[str, Tensor]) -> None:
        missing = [t for t in self.task_names if t not in losses]
        if missing:
            raise KeyError(f"losses lack tasks {missing} (have {sorted(losses)}); compute every weighted task")

    def _active(self, counts: Mapping[str, int] | None) -> list[bool]:
        return [True if counts is None else counts.get(t, 0) > 0 for t in self.task_names]

    def combine(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> Tensor:
        """Total loss (scalar) from per-task scalar losses; ``counts`` None = every task present."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Current weight of every task (what multiplies its loss)."""
        raise NotImplementedError

    def main_parameters(self) -> list[nn.Parameter]:
        """Parameters to train with the model's optimiser."""
        return []

    def before_backward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> None:
        """Hook run between :meth:`combine` and ``backward()`` (the graph is still alive)."""


class FixedWeighting(TaskWeighting):
    """``total = Σ w_k L_k`` with constant weights (default 1.0 each)."""

    def __init__(self, task_names: Iterable[str], weights: Mapping[str, float] | None = None,
                 known: Iterable[str] = LOSS_NAMES) -> None:
        super().__init__(task_names, known)
        given = dict(weights or {})
        unknown = [t for t in given if t not in self.known]
        if unknown:
            raise ValueError(f"fixed weights for unknown tasks {unknown}; known: {list(self.known)}")
        ignored = [t for t in given if t not in self.task_names]
        if ignored:
            logger.info("fixed weights for tasks that are not enabled are ignored: %s", ignored)
        bad = {t: w for t, w in given.items() if not w >= 0}
        if bad:
            raise ValueError(f"fixed task weights must be >= 0, got {bad}")
        self._weights = {t: float(given.get(t, 1.0)) for t in self.task_names}

    def combine(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> Tensor:
        self._check(losses)
        return torch.stack([self._weights[t] * losses[t] for t in self.task_names]).sum()

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


class UncertaintyWeighting(TaskWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learned log-variance s_k per task: ``total = Σ_k exp(-s_k) L_k + s_k``.

    This is the paper's regression form ``L / (2σ²) + log σ`` multiplied by 2, used for every
    task alike (the classification form differs only in the constant of the regulariser).
    For a fixed loss level the optimum is ``exp(-s_k) = 1 / L_k``: noisier tasks (higher
    irreducible loss) get lower weights. Tasks without rows in a batch are left out (their
    s_k gets no gradient in that step). s_k is trained by the model's optimiser.

    s_k is clamped to ``[-max_log_var, max_log_var]``: a task whose *training* loss shrinks because
    it is memorised would otherwise drive exp(-s_k) = 1 / L_k without bound and take over the
    shared layers exactly when it stops generalising (measured on the demo: the CTCVR weight went
    2 -> 21 in four epochs). The bound keeps every weight within e^±max_log_var.
    """

    def __init__(self, task_names: Iterable[str], max_log_var: float = 2.0, known: Iterable[str] = LOSS_NAMES) \
            -> None:
        super().__init__(task_names, known)
        if not max_log_var > 0:
            raise ValueError(f"uncertainty_max_log_var must be > 0, got {max_log_var}")
        self.max_log_var = float(max_log_var)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))

    def _s(self) -> Tensor:
        return self.log_vars.clamp(-self.max_log_var, self.max_log_var)

    def combine(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> Tensor:
        self._check(losses)
        terms = []
        log_vars = self._s()
        for k, (task, active) in enumerate(zip(self.task_names, self._active(counts))):
            s = log_vars[k]
            # An absent task still touches s (times 0) so distributed training sees it used.
            terms.append(torch.exp(-s) * losses[task] + s if active else losses[task] + 0.0 * s)
        return torch.stack(terms).sum()

    def weights(self) -> dict[str, float]:
        w = torch.exp(-self._s().detach()).tolist()
        return dict(zip(self.task_names, w))

    def main_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]


class GradNorm(TaskWeighting):
    """GradNorm (Chen et al., ICML 2018): balance the tasks' gradient magnitudes on the last shared layer.

    Each step, for every task k present in the batch:

    * ``G_k = || ∇_W (w_k L_k) ||`` on the shared parameters W (= w_k ||∇_W L_k||);
    * inverse training rate ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))`` with L_k(0) the
      task's first observed loss;
    * target ``mean_j(G_j) * r_k^alpha``, held constant;
    * the weights take one step of their own Adam optimiser (learning rate ``lr``) on
      ``Σ_k |G_k - target_k|``, then are clipped positive and rescaled to sum to the number
      of tasks.

    The network itself is trained on ``Σ w_k L_k`` with the weights held constant. Tasks
    absent from a batch are skipped in that step (their weight moves only through the
    rescaling). Under torch.distributed the weight gradients are averaged over processes so
    every process keeps the same weights (G_k is measured on the local batch).

    Args:
        task_names: the weighted losses.
        shared_params: W, e.g. :func:`training.model.last_shared_layer`.
        alpha: strength of the pull towards equal training rates.
        lr: learning rate of the weights' optimiser.
    """

    initial_losses: Tensor

    def __init__(self, task_names: Iterable[str], shared_params: Sequence[Tensor], alpha: float = 1.5,
                 lr: float = 0.025, known: Iterable[str] = LOSS_NAMES) -> None:
        super().__init__(task_names, known)
        self.shared_params = list(shared_params)
        if not self.shared_params:
            raise ValueError("GradNorm needs the shared parameters (pass training.model.last_shared_layer(model))")
        self.alpha = float(alpha)
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.full((len(self.task_names),), float("nan")))
        self.optimizer = torch.optim.Adam([self.task_weights], lr=lr)
        self.last_gradnorm_loss = float("nan")

    def combine(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> Tensor:
        self._check(losses)
        # A copy: before_backward updates the weights in place while this graph is alive.
        w = self.task_weights.detach().clone()
        return torch.stack([w[k] * losses[t] for k, t in enumerate(self.task_names)]).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.task_weights.detach().tolist()))

    def _grad_norm(self, loss: Tensor) -> Tensor:
        if not loss.requires_grad:
            return loss.new_zeros(())
        grads = torch.autograd.grad(loss, self.shared_params, retain_graph=True, allow_unused=True)
        squares = [g.pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(())

    def before_backward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None) -> None:
        self._check(losses)
        idx = [k for k, (t, a) in enumerate(zip(self.task_names, self._active(counts)))
               if a and bool(torch.isfinite(losses[t].detach()))]
        grad = torch.zeros_like(self.task_weights)
        present = torch.zeros_like(self.task_weights)
        norms = torch.stack([self._grad_norm(losses[self.task_names[k]]).float() for k in idx]) if idx else None
        if norms is not None and not bool(torch.isfinite(norms).all()):
            logger.warning("GradNorm: non-finite task gradient norms %s; weights not updated this step",
                           dict(zip([self.task_names[k] for k in idx], norms.tolist())))
            idx, norms = [], None
        if idx and norms is not None:
            present[idx] = 1.0
            current = torch.stack([losses[self.task_names[k]].detach().float() for k in idx])
            with torch.no_grad():
                for j, k in enumerate(idx):
                    if torch.isnan(self.initial_losses[k]):
                        self.initial_losses[k] = current[j].clamp_min(1e-8)
            g = self.task_weights[idx] * norms
            ratio = current / self.initial_losses[idx]
            rate = ratio / ratio.mean().clamp_min(1e-12)
            target = (g.detach().mean() * rate.pow(self.alpha)).detach()
            gradnorm_loss = (g - target).abs().sum()
            self.last_gradnorm_loss = float(gradnorm_loss.detach())
            grad = torch.autograd.grad(gradnorm_loss, self.task_weights)[0]
        if dist.is_available() and dist.is_initialized():
            both = torch.cat([grad, present])
            dist.all_reduce(both)
            grad, present = both[:len(grad)] / dist.get_world_size(), both[len(grad):]
        if not bool(present.any()):
            return
        before = self.task_weights.detach().clone()
        self.optimizer.zero_grad(set_to_none=True)
        self.task_weights.grad = grad
        self.optimizer.step()
        self.task_weights.grad = None
        with torch.no_grad():
            # Adam's momentum would move absent tasks too: they keep their weight this step.
            self.task_weights.copy_(torch.where(present > 0, self.task_weights, before))
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.task_names) / self.task_weights.sum())


def build_weighting(cfg: WeightingConfig, task_names: Iterable[str],
                    shared_params: Sequence[Tensor] | None = None, known: Iterable[str] = LOSS_NAMES) \
        -> TaskWeighting:
    """The configured task weighting.

    Args:
        cfg: ``training.weighting``.
        task_names: the weighted losses (``ModelSpec.loss_names``).
        shared_params: the last shared layer, required by GradNorm.
        known: every loss name the model family has (DUPN's by default; a tabular model's are its tasks).
    """
    names = tuple(task_names)
    if cfg.kind == "fixed":
        return FixedWeighting(names, cfg.fixed, known)
    if cfg.kind == "uncertainty":
        return UncertaintyWeighting(names, cfg.uncertainty_max_log_var, known)
    if cfg.kind == "gradnorm":
        if not shared_params:
            raise ValueError("weighting.kind=gradnorm needs shared_params=training.model.last_shared_layer(model)")
        return GradNorm(names, shared_params, cfg.gradnorm_alpha, cfg.gradnorm_lr, known)
    raise ValueError(f"unknown weighting kind '{cfg.kind}'; choose fixed, uncertainty or gradnorm")
