"""The PPP ceiling benchmark: Wilson intervals, the table it writes, the probe of the tower's price inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_ppp_ceiling import markdown, price_probe, quoted_models, wilson

GROUP = {"ppp_accuracy": 0.8, "tier_accuracy": 0.9, "labels": 500.0, "mean_events": 70.0}
RESULTS = {k: {"unseen": GROUP, "seen": GROUP} for k in ("model_view", "behaviour_only", "whole_lookback",
                                                         "no_catalogue")}
CONTEXT = {"command": "python -m benchmarks.bench_ppp_ceiling", "machine": "2 cores", "seconds": 5.0,
           "day": "2026-11-14", "lookback_days": 30, "max_len": 100, "label_noise": 0.1}


def test_wilson_interval() -> None:
    lo, hi = wilson(0.8, 500)
    assert lo < 0.8 < hi and hi - lo == pytest.approx(0.07, abs=0.005)
    assert wilson(1.0, 10)[1] == pytest.approx(1.0)
    assert all(x != x for x in wilson(0.5, 0))  # nan without labels


def test_table_has_every_row(tmp_path: Path) -> None:
    comparison = tmp_path / "comparison.json"
    stat = {"mean": 0.79, "std": 0.01, "n": 3}
    comparison.write_text(json.dumps({"rows": [
        {"label": "DUPN-all", "same_as": "", "metrics": {"ppp_accuracy": stat, "ppp_accuracy_seen": stat}},
        {"label": "shared-bottom", "same_as": "DUPN-all", "metrics": {"ppp_accuracy": stat}}]}))
    models = quoted_models(comparison)
    assert [m["label"] for m in models] == ["DUPN-all"]  # rows that repeat another are not quoted twice
    probe = {"unseen": 0.78, "seen": 0.77, "unseen_labels": 500.0, "seen_labels": 2000.0, "train_rows": 9000.0}
    text = markdown(RESULTS, {"ppp_accuracy": 0.91, "ppp_accuracy_seen": 0.9}, models, CONTEXT, probe)
    for needle in ("the models' inputs", "no profile", "every behaviour of the look-back", "without the catalogue",
                   "probe: logistic regression", "oracle: the latent tier", "model: DUPN-all", "0.8000 [0.7"):
        assert needle in text, needle
    assert "not run: no training set" in markdown(RESULTS, {"ppp_accuracy": 0.91, "ppp_accuracy_seen": 0.9}, [],
                                                  CONTEXT, "not run: no training set")
    assert quoted_models(tmp_path / "missing.json") == []


def test_probes_pass_on_the_reason_there_are_no_tier_rows() -> None:
    from benchmarks.bench_ppp_ceiling import choice_probe

    reason = "not run: no features/training_examples (run jobs/build_training_set.py)"
    assert price_probe(reason) == reason
    assert choice_probe(reason, 16, per_category=True) == reason


def test_probe_reads_the_tier_from_the_price_inputs(tiny_pipeline) -> None:
    from benchmarks.bench_ppp_ceiling import tier_rows

    cfg, tables, _ = tiny_pipeline
    got = price_probe(tier_rows(tables, cfg))
    assert isinstance(got, dict), got
    assert got["train_rows"] > 50 and got["unseen_labels"] + got["seen_labels"] > 20
    # far above the most common tier's share (22%): the prices carry the tier
    seen_and_unseen = (got["unseen"] * got["unseen_labels"] + got["seen"] * got["seen_labels"]) \
        / (got["unseen_labels"] + got["seen_labels"])
    assert seen_and_unseen > 0.35


def _choice_world(users: int, rng) -> list:
    """Users whose behaviours pick a price bin from their category's offer, tilted by their tier: the
    ChoiceModel's own form, with categories that offer only cheap or only dear prices, and users who shop
    mostly in one kind whatever their tier."""
    import numpy as np

    bins, tiers, cats = 8, 3, 6
    offer = np.full((cats, bins), -4.0)
    offer[np.arange(cats) % 2 == 0, :4] = 0.0  # even categories: cheap prices only
    offer[np.arange(cats) % 2 == 1, 4:] = 0.0  # odd categories: dear prices only
    taste = np.stack([-0.6 * (np.arange(bins) - 2.5 * t) ** 2 / 4 for t in range(tiers)], axis=1)  # (bins, tiers)
    centres = np.linspace(-1.75, 1.75, bins)  # the relative prices behind the bins (quantile cuts fall between)
    rows = []
    for u in range(users):
        tier = int(rng.integers(tiers))
        dear = rng.random(12) < rng.choice([0.1, 0.9])  # a user shops mostly cheap or mostly dear categories
        cat = 2 * rng.integers(cats // 2, size=12) + dear
        logits = offer[cat] + taste[:, tier][None, :]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        b = np.array([rng.choice(bins, p=row) for row in p])
        rows.append((centres[b] + rng.normal(0, 0.01, size=len(b)), np.zeros(len(b), dtype=int), cat, tier, u % 3))
    return rows


def test_the_choice_model_learns_each_categorys_offer() -> None:
    """Fitted on users of a world whose categories offer only cheap or only dear prices, the choice model with a
    learned offer per category reads the tier from where a price sits within its category's offer; without the
    per-category term it takes a cheap category's price for a poor user's choice."""
    import numpy as np

    from benchmarks.bench_ppp_ceiling import ChoiceModel

    rng = np.random.default_rng(0)
    train, test = _choice_world(1500, rng), _choice_world(600, rng)
    truth = np.array([r[3] for r in test])
    per_category = (ChoiceModel.fit(train, 8, 6, per_category=True).predict(test) == truth).mean()
    flat = (ChoiceModel.fit(train, 8, 6, per_category=False).predict(test) == truth).mean()
    assert per_category > 0.8
    assert per_category > flat + 0.1


def test_the_choice_model_trained_on_the_labels_learns_each_categorys_offer() -> None:
    """ChoiceModel.fit_labels (the form trained as a tier head would be): the offer reaches the tiers only
    through each category's normaliser, and that is enough to beat the form without it on the same world."""
    import numpy as np

    from benchmarks.bench_ppp_ceiling import ChoiceModel

    rng = np.random.default_rng(0)
    train, test = _choice_world(1500, rng), _choice_world(600, rng)
    truth = np.array([r[3] for r in test])
    per_category = (ChoiceModel.fit_labels(train, 8, 6, True, 1e-3).predict(test) == truth).mean()
    flat = (ChoiceModel.fit_labels(train, 8, 6, False, 1e-3).predict(test) == truth).mean()
    assert per_category > 0.85
    assert per_category > flat + 0.05


def test_table_has_the_choice_probes() -> None:
    choice = {"unseen": 0.83, "seen": 0.8, "unseen_labels": 500.0, "seen_labels": 2000.0, "train_rows": 9000.0,
              "bins": 16.0, "valid": 0.81}
    text = markdown(RESULTS, {"ppp_accuracy": 0.91, "ppp_accuracy_seen": 0.9}, [], CONTEXT, "not run",
                    {"per_category": choice, "no_catalogue": "not run: no training set"})
    assert "| probe: choice model with each category's offer learned" in text
    assert "16 relative-price bins, chosen on validation: 0.8100) | 0.8300 [" in text
    assert "Choice probe no_catalogue: not run: no training set." in text
    text = markdown(RESULTS, {"ppp_accuracy": 0.91, "ppp_accuracy_seen": 0.9}, [], CONTEXT, "not run",
                    {"labels_per_category": {**choice, "l2": 0.001}})
    assert "| probe: choice model with each category's offer learned, trained on the labels (trained on the " \
        "labels' cross-entropy as a tier head would be, over 9,000 training rows; 16 relative-price bins and an L2 " \
        "penalty of 0.001, chosen on validation: 0.8100) | 0.8300 [" in text


def test_choice_probe_reads_the_tier_from_the_price_inputs(tiny_pipeline) -> None:
    from benchmarks.bench_ppp_ceiling import CHOICE_BINS, choice_probe, tier_rows

    cfg, tables, _ = tiny_pipeline
    rows = tier_rows(tables, cfg)
    for on_labels in (False, True):
        got = choice_probe(rows, cfg.sequences.hash_buckets.category_id, per_category=False, on_labels=on_labels)
        assert isinstance(got, dict), got
        assert got["bins"] in CHOICE_BINS and got["train_rows"] > 50 and ("l2" in got) == on_labels
        both = (got["unseen"] * got["unseen_labels"] + got["seen"] * got["seen_labels"]) \
            / (got["unseen_labels"] + got["seen_labels"])
        assert both > 0.35  # far above the most common tier's share (22%)
