"""The MMoE synthetic study (``benchmarks/bench_mmoe_synthetic.py``): the paper's data generator, the three
multi-task designs learning it, and the checks of the paper's findings."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from benchmarks.bench_mmoe_synthetic import (
    MODELS, RunResult, TrainSettings, beyond_noise, build_model, degrades_most, falls_with_correlation, main,
    make_tasks, matched_widths, mean_predictor_mse, paired_deltas, parameters, run_one, split, task_mse,
    train_and_test, write)
from training import evaluation as ev


def _label_corr(p: float, n: int = 20_000, seed: int = 0) -> float:
    y = make_tasks(n, p, seed).y
    return float(np.corrcoef(y[:, 0], y[:, 1])[0, 1])


def test_weights_have_the_requested_cosine_and_scale() -> None:
    for p in (0.0, 0.5, 0.9, 1.0):
        w = make_tasks(10, p, seed=3, scale=2.0).weights
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), [2.0, 2.0], atol=1e-12)
        np.testing.assert_allclose(w[0] @ w[1] / 4.0, p, atol=1e-12)


def test_label_correlation_rises_with_the_task_correlation() -> None:
    """The labels' Pearson correlation is not p (the sines are non-linear) but rises with it."""
    c05, c09, c10 = _label_corr(0.5), _label_corr(0.9), _label_corr(1.0)
    assert c05 + 0.1 < c09 < c10, (c05, c09, c10)
    assert c10 > 0.98  # only the noise (variance 0.01 per task) separates the tasks at p = 1


def test_at_p_one_the_tasks_differ_only_by_their_noise() -> None:
    tasks = make_tasks(5_000, 1.0, seed=7)
    np.testing.assert_array_equal(tasks.clean[:, 0], tasks.clean[:, 1])
    noise = tasks.y - tasks.clean
    assert not np.allclose(noise[:, 0], noise[:, 1])
    assert noise.var(axis=0) == pytest.approx([0.01, 0.01], rel=0.1)
    # the sine terms are there: the labels are not the linear part alone
    linear = tasks.x @ tasks.weights[0]
    assert np.abs(tasks.clean[:, 0] - linear).mean() > 0.1


def test_generator_is_reproducible_from_its_seed() -> None:
    a, b, c = make_tasks(500, 0.5, seed=11), make_tasks(500, 0.5, seed=11), make_tasks(500, 0.5, seed=12)
    for name in ("x", "y", "clean", "weights", "alpha", "beta"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.x, c.x) and not np.allclose(a.alpha, c.alpha)
    # one seed gives the same inputs, sines and noise at every p: the comparison across p is paired
    d = make_tasks(500, 0.9, seed=11)
    np.testing.assert_array_equal(a.x, d.x)
    np.testing.assert_array_equal(a.alpha, d.alpha)
    np.testing.assert_array_equal(a.y[:, 0], d.y[:, 0])  # task1 does not depend on p
    assert not np.allclose(a.y[:, 1], d.y[:, 1])


def test_bad_input_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"cosine in \[-1, 1\]"):
        make_tasks(10, 1.5, seed=0)
    with pytest.raises(ValueError, match="generate more"):
        split(make_tasks(10, 0.5, seed=0), (8, 2, 2))
    with pytest.raises(ValueError, match="unknown model 'moe'"):
        build_model("moe", 4)


def test_widths_give_comparable_parameter_counts() -> None:
    widths = matched_widths()
    counts = {k: parameters(build_model(k, w)) for k, w in widths.items()}
    assert set(counts) == set(MODELS)
    ref = counts["mmoe"]
    assert all(abs(c - ref) / ref < 0.05 for c in counts.values()), counts
    out = build_model("ple", widths["ple"])(torch.zeros(3, 100))
    assert out.shape == (3, 2)


@pytest.mark.parametrize("kind", MODELS)
def test_a_short_training_beats_predicting_the_mean(kind: str) -> None:
    """A few epochs on 2,000 rows of a 10-dimensional version of the data bring the validation loss under
    half the mean predictor's, and the weights kept are those of the best validation epoch."""
    torch.set_num_threads(1)
    data = split(make_tasks(3_000, 0.9, seed=1, dim=10), (2_000, 500, 500))
    r = run_one(kind, {"shared_bottom": 32, "mmoe": 8, "ple": 8}[kind], data, 0.9, seed=0,
                settings=TrainSettings(lr=1e-2, batch_size=64, max_epochs=8, patience=3))
    mean_loss = float(mean_predictor_mse(data["train"], data["valid"]).sum())
    assert r.valid_loss < 0.5 * mean_loss, (r.valid_loss, mean_loss)
    assert r.valid_loss == min(r.valid_history) == r.valid_history[r.best_epoch - 1]
    assert math.isfinite(r.test_loss) and r.test_loss < mean_loss


def test_training_keeps_the_best_validation_epoch_and_stops_after_the_patience() -> None:
    """On 300 rows of 100 inputs the shared bottom overfits: the validation loss turns up after a few
    epochs, the weights of the best epoch are the ones kept, and training stops ``patience`` epochs later."""
    torch.set_num_threads(1)
    data = split(make_tasks(800, 0.9, seed=1), (300, 250, 250))
    torch.manual_seed(0)
    model = build_model("shared_bottom", 64)
    settings = TrainSettings(lr=1e-2, batch_size=32, max_epochs=30, patience=3)
    test, best, epoch, history = train_and_test(model, data, settings, seed=0)
    assert epoch < len(history) == epoch + settings.patience < settings.max_epochs
    assert best == min(history) < history[-1]
    assert float(task_mse(model, data["valid"]).sum()) == pytest.approx(best, rel=1e-6)
    assert float(test.sum()) == pytest.approx(float(task_mse(model, data["test"]).sum()), rel=1e-6)


def _run(model: str, p: float, seed: int, loss: float) -> RunResult:
    return RunResult(model=model, correlation=p, seed=seed, width=1, parameters=1,
                     test_mse={"task1": loss / 2, "task2": loss / 2}, valid_loss=loss, best_epoch=1, epochs_run=1,
                     stopped_early=True, seconds=0.0, valid_history=[loss])


def test_the_findings_follow_the_numbers() -> None:
    """(a) and (b) hold on numbers made to show them and fail on numbers that do not."""
    paper_like = {("shared_bottom", 0.5): 1.0, ("shared_bottom", 1.0): 0.2,
                  ("mmoe", 0.5): 0.3, ("mmoe", 1.0): 0.2}
    runs = [_run(m, p, s, v + 0.01 * s) for (m, p), v in paper_like.items() for s in range(3)]
    assert falls_with_correlation(runs).holds
    deltas = paired_deltas(runs)
    assert deltas["shared_bottom"].mean == pytest.approx(0.8)
    b = degrades_most(runs)
    assert b.holds and "Shared-Bottom minus the largest other (MMoE): 0.7000 ± 0.0000, beyond noise" in b.detail

    # MMoE degrades more than shared-bottom, and PLE's loss rises with p
    other = {("shared_bottom", 0.5): 0.25, ("shared_bottom", 1.0): 0.2, ("mmoe", 0.5): 0.6, ("mmoe", 1.0): 0.3,
             ("ple", 0.5): 0.3, ("ple", 1.0): 0.4}
    runs = [_run(m, p, s, v + 0.01 * s) for (m, p), v in other.items() for s in range(3)]
    finding = falls_with_correlation(runs)
    assert not finding.holds and "PLE: p 0.5→1: 0.3100→0.4100 **does not fall**" in finding.detail
    assert "Shared-Bottom: p 0.5→1: 0.2600→0.2100 falls" in finding.detail
    b = degrades_most(runs)
    assert not b.holds and "largest other (MMoE): -0.2500 ± 0.0000, beyond noise" in b.detail


def test_render_writes_the_same_results_again_from_the_json(tmp_path) -> None:
    """``--render`` rebuilds the tables and findings from a results JSON's runs, with its context kept."""
    runs = [_run(m, p, s, v + 0.01 * s) for (m, p), v in {("shared_bottom", 0.5): 1.0, ("shared_bottom", 1.0): 0.2,
                                                          ("mmoe", 0.5): 0.3, ("mmoe", 1.0): 0.2}.items()
            for s in range(3)]
    context = {"command": "python -m benchmarks.bench_mmoe_synthetic --seeds 0 1 2", "date": "2026-01-01",
               "machine": "m", "commit": "abc", "wall_minutes": 1.0, "cpu_minutes": 1.0, "seeds": [0, 1, 2],
               "correlations": [0.5, 1.0], "plot": "study.png",
               "settings": {**asdict(TrainSettings()), "sizes": [10, 1, 1], "dim": 100, "scale": 1.0,
                            "sine_terms": 10, "noise_var": 0.01, "tower_hidden": 8,
                            "widths": {"shared_bottom": 1, "mmoe": 1}}}
    write(runs, {0.5: ev.summarize([4.0, 5.0]), 1.0: ev.summarize([4.0, 5.0])}, context, tmp_path, "study")
    first = (tmp_path / "study.md").read_text()
    assert "**(b) Shared-Bottom degrades most as p falls: holds beyond noise.**" in first
    (tmp_path / "study.md").unlink()
    main(["--render", str(tmp_path / "study.json")])
    assert (tmp_path / "study.md").read_text() == first
    assert json.loads((tmp_path / "study.json").read_text())["findings"][1]["verdict"] == "holds beyond noise"


def test_paired_differences_separate_what_the_spread_of_seeds_hides() -> None:
    """Seeds whose losses differ a lot (each draws another pair of tasks) but whose drop from p = 0.5 to
    p = 1 is steady: the drop is beyond noise once paired; a drop that changes sign is not."""
    steady = [_run("mmoe", p, s, (1.0 + s) + (0.1 if p == 0.5 else 0.0)) for p in (0.5, 1.0) for s in range(4)]
    finding = falls_with_correlation(steady)
    assert finding.holds and "beyond noise" in finding.detail
    assert finding.verdict == "holds beyond noise"
    flipping = [_run("mmoe", p, s, (1.0 + s) + (0.1 * (-1) ** s if p == 0.5 else 0.0))
                for p in (0.5, 1.0) for s in range(4)]
    assert "within noise" in falls_with_correlation(flipping).detail
    # a mean drop (0.1 - 0.1 + 0.1 - 0.05 > 0) made of drops that change sign holds only in the means
    mixed = [_run("mmoe", p, s, (1.0 + s) + ((0.1, -0.1, 0.1, -0.05)[s] if p == 0.5 else 0.0))
             for p in (0.5, 1.0) for s in range(4)]
    assert falls_with_correlation(mixed).verdict == "holds in the means, within noise"
    rising = [_run("mmoe", p, s, 1.0 + s + (0.0 if p == 0.5 else 0.1)) for p in (0.5, 1.0) for s in range(4)]
    assert falls_with_correlation(rising).verdict == "does not hold"
    assert beyond_noise(ev.summarize([0.1, 0.11, 0.09])) and not beyond_noise(ev.summarize([0.1]))
