"""bench_census's bookkeeping: model keys, the summary over seeds (collapsed gates counted per seed), the
goal checks of its table, and re-rendering a table from its JSON."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_census as bc


def run(model: str, seed: int, income: float, collapsed: list[str] | None = None, valid: float = 0.95,
        married: float = 0.99) -> bc.Run:
    gates = {"gate_income": [0.05, 0.95] if collapsed else [0.5, 0.5]} if model.startswith("mmoe") else {}
    return bc.Run(model, seed, {"income_auc": income, "never_married_auc": married},
                  {"income_auc": valid, "never_married_auc": 0.99}, 5.0, 1000, 0.01, gates, collapsed or [])


def test_model_keys_name_a_design_and_a_weighting() -> None:
    assert bc.design_of("mmoe_gradnorm") == ("mmoe", "gradnorm")
    assert bc.design_of("cross_stitch_uncertainty") == ("cross_stitch", "uncertainty")
    assert bc.design_of("single_task") == ("shared_bottom", "fixed")
    assert len(bc.MODELS) == 1 + 5 * 3
    with pytest.raises(ValueError, match="unknown model"):
        bc.design_of("mmoe_typo")


def test_summary_counts_the_seeds_whose_gate_collapsed() -> None:
    runs = [run("mmoe_fixed", 0, 0.94, ["gate_income"]), run("mmoe_fixed", 1, 0.95),
            run("mmoe_fixed", 2, 0.96, ["gate_income"])]
    s = bc.summarize(runs)["mmoe_fixed"]
    assert s["income"]["mean"] == pytest.approx(0.95) and s["income"]["std"] == pytest.approx(0.01)
    assert s["collapsed_gates"] == {"gate_income": 2}
    assert s["samples_per_s"] == pytest.approx(100_000)


def test_the_table_checks_the_goal_and_renders_again_from_json(tmp_path) -> None:
    # mmoe has the better test AUC, shared-bottom the better validation score: with no configured model
    # the goal checks shared-bottom
    runs = [run("shared_bottom_fixed", i, 0.946 + 0.0005 * i, valid=0.95, married=0.99406) for i in range(3)] + \
        [run("mmoe_fixed", i, 0.96, valid=0.94) for i in range(3)]
    notes = {"machine": "m", "date": "d", "commit": "c", "load": 0.5, "data": "x", "rows": "r",
             "split": {"seed": 1, "test_frac": 0.2, "valid_frac": 0.1}, "epochs_cap": 3, "patience": 1,
             "seeds": [0, 1, 2], "training": "t"}
    text = bc.table(bc.summarize(runs), "cmd", notes)
    assert "| income AUC ≥ 0.9453 (the best validation score, mean) | yes | shared_bottom_fixed: 0.9465 |" in text
    assert "| **shared_bottom_fixed** |" in text and "| mmoe_fixed |" in text
    assert "| its never-married AUC ≥ 0.9941 (mean, at the reference's 4 decimals) | yes | 0.99406 |" in text
    assert "| its samples/s ≥ 2 × 29k = 58,000 | yes |" in text
    # the configured design, when it ran, is the one checked
    text = bc.table(bc.summarize(runs), "cmd", {**notes, "configured": "mmoe_fixed"})
    assert "| income AUC ≥ 0.9453 (the configured model, mean) | yes | mmoe_fixed: 0.9600 |" in text
    assert "| **mmoe_fixed** |" in text
    slow = [run("shared_bottom_fixed", i, 0.944, married=0.99404) for i in range(3)]
    text = bc.table(bc.summarize(slow), "cmd", notes)
    assert "| income AUC ≥ 0.9453 (the best validation score, mean) | **no** |" in text
    assert "| its never-married AUC ≥ 0.9941 (mean, at the reference's 4 decimals) | **no** | 0.99404 |" in text
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"command": "cmd", **notes, "summary": {},
                                "runs": [{**r.__dict__, "samples_per_s": r.samples_per_s} for r in runs]}))
    bc.render(path, tmp_path / "t.md")
    assert "shared_bottom_fixed" in (tmp_path / "t.md").read_text()
    assert json.loads(path.read_text())["summary"]["shared_bottom_fixed"]["income"]["mean"] == pytest.approx(0.9465)
