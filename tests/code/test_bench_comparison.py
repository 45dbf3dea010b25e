"""The comparison table is written from the runs: marks, missing seeds, convergence flags."""
from __future__ import annotations

from benchmarks.bench_comparison import REFERENCE, ROWS, Row, RowResult, lift_share, markdown
from training.experiment import RunOutcome

CONTEXT = {"command": "python -m benchmarks.bench_comparison", "machine": "2 cores", "date": "2026-12-01",
           "wall_minutes": 1.0, "train_minutes": 3.0, "data": "d", "protocol": "p", "budget": "b", "seeds": [0, 1, 2]}
ORACLE = {"ctr_auc": 0.85, "l2r_auc": 0.8, "follow_auc": 0.8, "ppp_accuracy": 0.9}


def outcome(key: str, seed: int, ctr: float, last_best: bool = False) -> RunOutcome:
    evals = [{"step": 10.0}, {"step": 20.0}]
    return RunOutcome(name=key, seed=seed, test={"ctr_auc": ctr, "follow_auc": 0.7}, valid={},
                      selected_step=20.0 if last_best else 10.0, selected_epoch=0.5, evals=evals,
                      train_seconds=10.0, train_samples=1000, train_rows=100, stopped_early=False, parameters=1)


def row(key: str) -> Row:
    return next(r for r in ROWS if r.key == key)


def test_table_marks_best_noise_missing_seeds_and_runs_still_improving() -> None:
    ref = RowResult(row(REFERENCE), [outcome(REFERENCE, s, 0.80 + 0.001 * s, last_best=s == 0) for s in (0, 1, 2)])
    wide = RowResult(row("wide"), [outcome("wide", s, 0.70 + 0.001 * s) for s in (0, 1)])
    dssm = RowResult(row("dssm"), [])
    text = markdown([wide, dssm, ref], ORACLE, CONTEXT)
    ref_line = next(line for line in text.splitlines() if line.startswith("| DUPN ablations | DUPN-all"))
    assert "**0.8010 ± 0.0010**" in ref_line  # the best CTR AUC is bold
    assert ref_line.rstrip(" |").endswith("1/3")  # one seed's best scoring was its last
    assert "2 of 3 seeds" in text and "not run" in text
    wide_line = next(line for line in text.splitlines() if line.startswith("| baselines | Wide"))
    assert "≈" not in wide_line.split("|")[3]  # 0.70 vs 0.80: beyond noise
    vs = text.split("## DUPN-all against every other row")[1]
    assert any(line.startswith("| Wide") and "| > |" in line for line in vs.splitlines())


def test_lift_share() -> None:
    assert abs(lift_share(0.8, 0.9) - 0.75) < 1e-12
    assert lift_share(0.6, 0.5) != lift_share(0.6, 0.5)  # nan: the oracle has no lift


def test_run_cache_stamps_runs_and_refuses_runs_of_other_data(tmp_path) -> None:  # noqa: ANN001
    import json

    import pytest

    from benchmarks.bench_comparison import NotRun, RunCache

    made = []

    def make() -> RunOutcome:
        made.append(1)
        return outcome("wide", 0, 0.7)

    cache = RunCache(tmp_path, "100 rows, sha256 aaa")
    assert cache.get("k", make).test["ctr_auc"] == 0.7 and len(made) == 1
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["provenance"]["data"] == "100 rows, sha256 aaa" and record["provenance"]["commit"]
    assert cache.get("k", make).test["ctr_auc"] == 0.7 and len(made) == 1      # from the cache
    assert cache.commits == {record["provenance"]["commit"]}
    with pytest.raises(NotRun):                                                # another world: not used
        RunCache(tmp_path, "90 rows, sha256 bbb", cached_only=True).get("k", make)
    assert RunCache(tmp_path, "90 rows, sha256 bbb").get("k", make) and len(made) == 2
