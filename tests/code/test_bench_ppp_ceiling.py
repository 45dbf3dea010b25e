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


def test_probe_reads_the_tier_from_the_price_inputs(tiny_pipeline) -> None:
    cfg, tables, _ = tiny_pipeline
    got = price_probe(tables, cfg)
    assert isinstance(got, dict), got
    assert got["train_rows"] > 50 and got["unseen_labels"] + got["seen_labels"] > 20
    # far above the most common tier's share (22%): the prices carry the tier
    seen_and_unseen = (got["unseen"] * got["unseen_labels"] + got["seen"] * got["seen_labels"]) \
        / (got["unseen_labels"] + got["seen_labels"])
    assert seen_and_unseen > 0.35
