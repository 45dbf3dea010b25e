"""The comparison table is written from the runs: marks, missing seeds, convergence flags."""
from __future__ import annotations

from benchmarks.bench_comparison import (NOPRIORS, NOPROFILE, NOWD, NOWD_REFERENCE, PLATFORM, PROBES, REFERENCE, ROWS,
                                         Row, RowResult, _cache_key, lift_share, markdown, paired_difference)
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


def test_the_platform_model_row_gets_its_own_targets_and_comparison_when_it_ran() -> None:
    ref = RowResult(row(REFERENCE), [outcome(REFERENCE, s, 0.80 + 0.001 * s) for s in (0, 1, 2)])
    gbdt = RowResult(row("gbdt"), [outcome("gbdt", s, 0.83 + 0.001 * s) for s in (0, 1, 2)])
    without = markdown([gbdt, ref], ORACLE, CONTEXT)
    assert "## DUPN-all against the targets" in without and "platform's model against" not in without
    platform = RowResult(row(PLATFORM), [outcome(PLATFORM, s, 0.84 + 0.001 * s) for s in (0, 1, 2)])
    text = markdown([gbdt, ref, platform], ORACLE, CONTEXT)
    targets = text.split("## The platform's model against the targets")[1].split("##")[0]
    assert "| CTR AUC | 0.8410 ± 0.0010 | 0.8500 | 97% | ≥ 75% |" in targets  # (0.841 − 0.5) / (0.85 − 0.5)
    assert "| CTR AUC | 0.8010 ± 0.0010 |" in text.split("## DUPN-all against the targets")[1].split("##")[0]
    vs = text.split("## The platform's model against every other row")[1].split("##")[0]
    assert any(line.startswith("| GBDT") and "| > |" in line for line in vs.splitlines())
    assert any(line.startswith("| DUPN-all") and "| > |" in line for line in vs.splitlines())


def test_the_validation_table_pairs_each_row_with_the_reference_over_the_seeds_both_ran() -> None:
    def with_valid(key: str, seed: int, ctr: float) -> RunOutcome:
        o = outcome(key, seed, 0.8)
        o.valid = {"ctr_auc": ctr, "follow_auc": 0.7}
        return o

    ref = RowResult(row(REFERENCE), [with_valid(REFERENCE, s, 0.80 + 0.01 * s) for s in (0, 1, 2)])
    # +0.002 on seeds 0 and 1 (+0.003, +0.001): paired, within noise of the reference's spread; a seed 5 it lacks
    close = RowResult(row("dupn_cosine"), [with_valid("dupn_cosine", 0, 0.803), with_valid("dupn_cosine", 1, 0.811),
                                           with_valid("dupn_cosine", 5, 0.9)])
    lower = RowResult(row("dupn_head128"), [with_valid("dupn_head128", s, 0.79 + 0.01 * s) for s in (0, 1, 2)])
    one = RowResult(row("dupn_linear3"), [with_valid("dupn_linear3", 2, 0.825)])
    mean, se, n = paired_difference(ref, close, "ctr_auc")
    assert n == 2 and abs(mean - 0.002) < 1e-9 and abs(se - 0.001) < 1e-9
    assert paired_difference(ref, lower, "ctr_auc")[:2][0] < -0.0099 and paired_difference(ref, one, "ctr_auc")[2] == 1
    text = markdown([ref, close, lower, one], ORACLE, CONTEXT).split("## The validation day")[1]
    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| DUPN")}
    assert "(+0.0020 ± 0.0010)" in lines[row("dupn_cosine").label]  # one standard error from 0: not bold
    assert "(**-0.0100 ± 0.0000**)" in lines[row("dupn_head128").label]
    assert "| 2 | 0.8250 (+0.0050) |" in lines[row("dupn_linear3").label]  # one seed: its value and the difference
    assert "0.8100 ± 0.0100 |" in lines[row(REFERENCE).label]
    # --pair-with: the same rows paired with another one (the model the settings were tried on)
    base = RowResult(row(NOWD_REFERENCE), [with_valid(NOWD_REFERENCE, s, 0.79 + 0.01 * s) for s in (0, 1, 2)])
    text = markdown([ref, base, lower], ORACLE, {**CONTEXT, "pair_with": NOWD_REFERENCE})
    text = text.split("## The validation day")[1]
    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| DUPN")}
    assert "paired difference from DUPN-all without the weight decay" in text
    assert "(**+0.0100 ± 0.0000**)" in lines[row(REFERENCE).label] and "(" not in lines[row(NOWD_REFERENCE).label][-40:]
    assert "| 0.8000 ± 0.0100 (+0.0000 ± 0.0000) |" in lines[row("dupn_head128").label]


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


def test_a_setting_added_later_keeps_earlier_runs_keys_where_it_cannot_change_the_model() -> None:
    from benchmarks.bench_comparison import _cache_key

    def key(family: str, **added: int) -> str:
        model = {"family": family, "lstm_hidden": 64, **added}
        return _cache_key(row("dupn_all"), {"spec": {"model": model}, "training": {"lr": 0.002, "model": model}},
                          3, 0)

    assert key("dupn", recency_interests=0) == key("dupn")           # at its default: the earlier key
    assert key("dssm", recency_interests=3) == key("dssm")           # a family that does not read it
    assert key("dupn", recency_interests=3) != key("dupn")           # it changes the model: a new key
    # a setting that acts only with another one: dropped while that one is off, kept (and keyed) when on
    assert key("dupn", side_inputs=0, side_bins=16) == key("dupn") == key("dupn", side_inputs=0, side_bins=8)
    assert key("dupn", side_inputs=4, side_bins=16) != key("dupn", side_inputs=4, side_bins=8)
    assert key("dupn", side_inputs=4, side_bins=16) != key("dupn")
    # ... and one that also keeps the earlier keys at its earlier value (prior_pieces false) when that one is on
    assert key("dupn", target_priors=False, prior_pieces=True) == key("dupn") == key("dupn", target_priors=False)
    assert key("dupn", target_priors=True, prior_pieces=False) == key("dupn", target_priors=True)
    assert key("dupn", target_priors=True, prior_pieces=True) != key("dupn", target_priors=True)


def test_the_specs_tower_log_priors_keys_only_the_detached_models_it_changes() -> None:
    """Every spec holds tower_log_priors since 35d71b4: the runs made before it stay found, except the detached
    models with the priors as pieces, whose tower heads it changes (those runs were made as its False)."""
    from benchmarks.bench_comparison import _cache_key

    def key(tower_log_priors: bool | None, **model_settings: object) -> str:
        model = {"family": "dupn", "lstm_hidden": 64, "target_priors": True, **model_settings}
        spec: dict[str, object] = {"model": model}
        if tower_log_priors is not None:
            spec["tower_log_priors"] = tower_log_priors
        return _cache_key(row("dupn_all"), {"spec": spec, "training": {"lr": 0.002, "model": model}}, 3, 0)

    detached = {"side_inputs": 4, "side_detached": True, "prior_pieces": True}
    assert key(True) == key(None) == key(False)                            # DUPN-all: no effect
    assert key(True, side_inputs=4, prior_pieces=True) == key(None, side_inputs=4, prior_pieces=True)
    assert key(True, side_inputs=4, side_detached=True) == key(None, side_inputs=4, side_detached=True)
    assert key(False, **detached) == key(None, **detached)                 # as the runs were made before it
    assert key(True, **detached) != key(None, **detached)                  # the tower heads read logs: new runs


def test_last_bit_differences_give_one_key() -> None:
    from benchmarks.bench_comparison import _cache_key

    def resolved(mean: float, zero: float = 2.08e-17) -> dict:
        return {"spec": {"norm": {"seq_log_price": [mean, 1.5], "rel_log_price": [zero, 0.36]}},
                "training": {"lr": 0.002}}

    a, b = resolved(4.00792012345678), resolved(4.00792012345678 + 1e-15, 1.94e-17)
    assert _cache_key(row("wide"), a, 0, 0) == _cache_key(row("wide"), b, 0, 0)
    assert _cache_key(row("wide"), resolved(4.0079), 0, 0) != _cache_key(row("wide"), a, 0, 0)


def test_a_training_setting_added_later_keeps_earlier_keys_at_the_value_that_reproduces_them() -> None:
    from benchmarks.bench_comparison import _cache_key

    def key(**stopping: int) -> str:
        training = {"lr": 0.002, "early_stopping": {"patience": 2, **stopping}}
        return _cache_key(row("wide"), {"spec": {}, "training": training}, 3, 0)

    assert key(min_rows=0) == key()          # selection as before the setting existed
    assert key(min_rows=1000) != key()       # another selection rule: runs made before it are not used


def test_a_world_without_oracle_or_follow_task_drops_those_parts() -> None:
    """On a real log (no oracle, no follow or PPP task) the table keeps only the columns some row has,
    prints no oracle row and no target table, and still compares DUPN-all with every row."""
    def bare(key: str, seed: int, ctr: float) -> RunOutcome:
        return RunOutcome(name=key, seed=seed, test={"ctr_auc": ctr, "l2r_ndcg10": 0.5}, valid={},
                          selected_step=1.0, selected_epoch=0.5, evals=[], train_seconds=1.0, train_samples=10,
                          train_rows=10, stopped_early=True, parameters=1)
    ref = RowResult(row(REFERENCE), [bare(REFERENCE, s, 0.70 + 0.001 * s) for s in (0, 1, 2)])
    pop = RowResult(row("popularity"), [bare("popularity", s, 0.60) for s in (0, 1, 2)])
    text = markdown([pop, ref], {}, CONTEXT)
    header = next(line for line in text.splitlines() if line.startswith("| group | model |"))
    assert "CTR AUC" in header and "L2R NDCG@10" in header
    assert "follow AUC" not in header and "PPP acc." not in header
    assert "| oracle |" not in text and "DUPN-all against the targets" not in text
    vs = text.split("## DUPN-all against every other row")[1]
    assert any(line.startswith("| Popularity") and line.count("|") == 4 and "| > |" in line
               for line in vs.splitlines())


def test_the_command_line_takes_a_world_overrides_and_rows() -> None:
    from benchmarks.bench_comparison import TAOBAO_ROWS, parser

    args = parser().parse_args(["--world", "taobao", "--config", "conf/taobao.yaml", "--set", "training.epochs=4",
                                "--rows", "popularity", "gbdt"])
    assert (args.world, args.overrides, args.rows) == ("taobao", ["training.epochs=4"], ["popularity", "gbdt"])
    assert parser().parse_args([]).world == "demo"
    # the Taobao rows exist and need no follow or PPP table
    keys = {r.key for r in ROWS}
    assert set(TAOBAO_ROWS) <= keys and not {"w_gradnorm", "mtl_mmoe"} & set(TAOBAO_ROWS)


def test_gbdt_ablation_rows_leave_out_features_the_gbdt_has() -> None:
    """A misspelt exclusion would leave the feature in and make the ablation the GBDT itself."""
    from benchmarks.bench_comparison import ROWS
    from features.gbdt import feature_columns

    ablations = [r for r in ROWS if r.exclude]
    assert ablations and all(r.kind in ("gbdt", "feature_mlp", "hybrid") for r in ablations)
    read = set(feature_columns(8))
    assert "talent_follow_rate_prev" in read and "misspelt_feature" not in read
    for r in ablations:
        assert set(r.exclude) <= read, r.key


def test_dupn_noprofile_finds_the_runs_made_as_dupn_all_before_the_category_profile() -> None:
    """The runs of DUPN-all made before the category profile keep their cache keys as dupn_noprofile's (the
    setting at its default is left out of a key), and DUPN-all with the profile is another run."""
    rows = {r.key: r for r in ROWS}
    model = {"family": "dupn", "property_in": "all", "recency_interests": 3}
    before = {"spec": {"model": model}}
    now = {"spec": {"model": {**model, "category_profile": 0}}}
    profiled = {"spec": {"model": {**model, "category_profile": 256}}}
    made_as = Row(REFERENCE, "", "DUPN ablations")  # the row's runs then (it now reads dupn_priors' runs)
    assert NOPROFILE in rows["dupn_noprofile"].overrides
    assert _cache_key(rows["dupn_noprofile"], now, 3, 0) == _cache_key(made_as, before, 3, 0)
    assert _cache_key(made_as, profiled, 3, 0) != _cache_key(made_as, before, 3, 0)
    assert _cache_key(rows["dupn_noprofile"], now, 3, 1) != _cache_key(rows["dupn_noprofile"], now, 3, 0)


def test_rows_without_the_category_profile_are_also_read_against_dupn_noprofile() -> None:
    """The ablations leave the profile out: a second table compares them with DUPN-all without it, where
    the first (against the profiled DUPN-all) would mix in the profile's gain."""
    ref = RowResult(row(REFERENCE), [outcome(REFERENCE, s, 0.90 + 0.001 * s) for s in (0, 1, 2)])
    base = RowResult(row("dupn_noprofile"), [outcome("dupn_noprofile", s, 0.80 + 0.001 * s) for s in (0, 1, 2)])
    bpatt = RowResult(row("dupn_bpatt"), [outcome("dupn_bpatt", s, 0.80 + 0.001 * s) for s in (0, 1, 2)])
    wide = RowResult(row("wide"), [outcome("wide", s, 0.70 + 0.001 * s) for s in (0, 1, 2)])
    text = markdown([wide, bpatt, ref, base], ORACLE, CONTEXT)
    first, second = text.split("## DUPN-all against every other row")[1].split(
        "## DUPN-all without the category profile against the rows measured without it")
    assert any(line.startswith("| DUPN-bpatt") and "| > |" in line for line in first.splitlines())
    fair = [line for line in second.splitlines() if line.startswith("| ")][1:]  # after the header row
    assert len(fair) == 1 and fair[0].startswith("| DUPN-bpatt") and "| ≈ |" in fair[0]  # wide keeps the profile


def test_dupn_all_finds_the_runs_made_as_dupn_priors_and_dupn_nopriors_those_made_before_them() -> None:
    """Once the target priors are the platform's: DUPN-all's key is the one its runs were made under (the
    row that tried the priors), dupn_nopriors' the key of DUPN-all's runs made before them, and every other
    neural row pins them off, so its earlier runs keep their keys."""
    rows = {r.key: r for r in ROWS}
    model = {"family": "dupn", "property_in": "all", "recency_interests": 3, "category_profile": 256}
    before = {"spec": {"model": model}}
    off = {"spec": {"model": {**model, "target_priors": False}}}
    on = {"spec": {"model": {**model, "target_priors": True}}}
    tried = Row("dupn_priors", "", "DUPN ablations")
    assert _cache_key(rows[NOWD_REFERENCE], on, 3, 0) == _cache_key(tried, on, 3, 0)  # (now without weight decay)
    assert _cache_key(rows["dupn_nopriors"], off, 3, 0) == _cache_key(Row(REFERENCE, "", "DUPN ablations"), before,
                                                                      3, 0)
    assert _cache_key(rows[NOWD_REFERENCE], on, 3, 0) != _cache_key(rows["dupn_nopriors"], off, 3, 0)
    pinned = [r.key for r in ROWS if r.kind in ("neural", "stl") and r.key not in (REFERENCE, NOWD_REFERENCE)
              and r.key not in PROBES and "training.model.target_priors=false" not in r.overrides]
    assert pinned == []
    # the probes vary the platform's model as it is: the priors stay on
    assert all(NOPRIORS not in rows[k].overrides and rows[k].kind == "neural" for k in PROBES)


def test_dupn_all_finds_the_runs_made_as_dupn_wd3e4_and_every_row_measured_before_weight_decay_pins_it_off() -> None:
    """Once the weight decay is the platform's (conf/local.yaml): DUPN-all resolves to the configuration of
    the row that tried it and reads that row's runs; DUPN-all without it reads the runs made before it; every
    other neural row resolves to no weight decay, as when its runs were made, so its key is unchanged."""
    from core.config import load_config

    rows = {r.key: r for r in ROWS}

    def training(key: str) -> dict:
        return load_config("conf/local.yaml", list(rows[key].overrides)).training.model_dump(mode="json")

    assert training(REFERENCE)["weight_decay"] == 3e-4  # the platform's setting
    assert training(REFERENCE) == training("dupn_wd3e4")
    resolved = {"spec": {"model": {"family": "dupn"}}, "training": training(REFERENCE)}
    assert _cache_key(rows[REFERENCE], resolved, 3, 0) == _cache_key(Row("dupn_wd3e4", "", ""), resolved, 3, 0)
    # the setting before it keeps its own runs
    assert training("dupn_wd1e4") == {**training(REFERENCE), "weight_decay": 1e-4}
    assert training(NOWD_REFERENCE) == {**training(REFERENCE), "weight_decay": 0.0}
    before = {"spec": {"model": {"family": "dupn"}}, "training": training(NOWD_REFERENCE)}
    assert _cache_key(rows[NOWD_REFERENCE], before, 3, 0) == _cache_key(Row("dupn_priors", "", ""), before, 3, 0)
    decayed = (REFERENCE, "dupn_wd1e4", "dupn_wd1e5", "dupn_wd3e4", "dupn_wd1e3", "dupn_top_share", "dupn_price_gaps",
               "dupn_prior_pieces")
    for r in ROWS:
        if r.kind in ("neural", "stl") and r.key not in decayed:
            assert NOWD in r.overrides and training(r.key)["weight_decay"] == 0.0, r.key


def test_pair_with_must_be_among_the_rows_run_and_defaults_to_dupn_all() -> None:
    import pytest

    from benchmarks.bench_comparison import parse_args

    assert parse_args(["--rows", "dupn_wd3e4"]).pair_with is None  # the table pairs with DUPN-all
    assert parse_args(["--rows", "dupn_all", "dupn_nowd", "--pair-with", "dupn_nowd"]).pair_with == NOWD_REFERENCE
    with pytest.raises(SystemExit):
        parse_args(["--rows", "dupn_wd3e4", "--pair-with", "dupn_nowd"])


def test_the_feature_ladder_adds_the_history_groups_back_one_at_a_time() -> None:
    """The ladder's first row keeps what DUPN's heads read beside the sequence, every later row adds one group of
    history summaries back, and its last row reads every column of feature_mlp."""
    from benchmarks.bench_comparison import HISTORY_GROUPS, NOITEM, ROWS
    from features.gbdt import feature_columns, task_features

    ladder = [r for r in ROWS if r.group == "feature ladder"]
    assert len(ladder) == len(HISTORY_GROUPS) + 1 and all(r.kind == "feature_mlp" for r in ladder)
    for before, after, (_, _, group) in zip(ladder, ladder[1:], HISTORY_GROUPS):
        assert set(before.exclude) - set(after.exclude) == set(group)
    assert set(ladder[-1].exclude) == set(NOITEM) == set(next(r for r in ROWS if r.key == "feature_mlp").exclude)
    kept = set(task_features("ctr", 8)) - set(ladder[0].exclude)
    assert kept == {"target_category", "target_rel_price", "query_category_share", "has_query", "user_age_level",
                    "user_gender", "user_city_level", *[f"rank_{i}" for i in range(8)]}
    groups = [f for _, _, g in HISTORY_GROUPS for f in g]
    assert len(groups) == len(set(groups)) and set(groups) <= set(feature_columns(8))


def test_the_hybrid_rows_heads_read_the_ladders_history_summaries() -> None:
    """dupn_hybrid is DUPN-all plus every column the ladder adds back; dupn_hybrid_price the price group alone."""
    from benchmarks.bench_comparison import HISTORY_GROUPS, HYBRID_COLUMNS, REFERENCE, ROWS

    rows = {r.key: r for r in ROWS}
    price = next(g for name, _, g in HISTORY_GROUPS if name == "price")
    assert set(HYBRID_COLUMNS) == {f for _, _, g in HISTORY_GROUPS for f in g}
    for key, wanted in (("dupn_hybrid", set(HYBRID_COLUMNS)), ("dupn_hybrid_price", set(price))):
        row = rows[key]
        assert row.kind == "hybrid" and row.overrides == rows[REFERENCE].overrides
        assert {f for f in HYBRID_COLUMNS if f not in row.exclude} == wanted


def test_the_benchmarks_that_measure_dupn_all_pin_it_whatever_the_config_trains() -> None:
    """conf/local.yaml trains the detached hybrid; the comparison's base, the slices, ESMM and the training-speed
    benchmark put benchmarks.common.DUPN_ALL first, which gives DUPN-all's heads alone (their own overrides win)."""
    from benchmarks.bench_comparison import BASE
    from benchmarks.common import DUPN_ALL
    from core.config import load_config
    from tests.conftest import LOCAL_CONF

    assert BASE == DUPN_ALL
    local = load_config(LOCAL_CONF)
    assert local.training.hybrid and local.training.model.prior_pieces
    pinned = load_config(LOCAL_CONF, list(DUPN_ALL))
    assert not pinned.training.hybrid and not pinned.training.model.prior_pieces
    assert not pinned.training.model.side_detached
    assert load_config(LOCAL_CONF, [*DUPN_ALL, "training.model.prior_pieces=true"]).training.model.prior_pieces


def test_a_failing_job_step_raises_one_platform_error_naming_the_job_and_its_command() -> None:
    """benchmarks.common.run_job is every benchmark's way to run a platform job: its failure is a PlatformError
    (the benchmark's entry point prints it as its one exit line), not a traceback or a silent return."""
    import pytest

    from benchmarks.common import run_job
    from core.errors import PlatformError
    from tests.conftest import LOCAL_CONF

    with pytest.raises(PlatformError, match=r"^jobs\.no_such_job failed \(exit 1\): jobs\.no_such_job --config "):
        run_job(str(LOCAL_CONF), ["lake_root=/nonexistent"], "jobs.no_such_job", "--date", "2026-11-14")


def test_a_platform_error_inside_a_benchmark_ends_it_with_one_line_naming_the_benchmark() -> None:
    """benchmarks.common.exits_on_platform_error (bench_main's and bench_comparison's and bench_census's
    preparation): a PlatformError becomes ``SystemExit("<benchmark>: <error>")`` without its traceback
    chained; any other error passes through unchanged."""
    import pytest

    from benchmarks.common import exits_on_platform_error
    from core.errors import PlatformError

    with pytest.raises(SystemExit) as caught:
        with exits_on_platform_error("bench_x"):
            raise PlatformError("jobs.build_sequences failed (exit 1): jobs.build_sequences --date 2026-11-14")
    assert str(caught.value) == "bench_x: jobs.build_sequences failed (exit 1): jobs.build_sequences --date 2026-11-14"
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    with pytest.raises(ValueError, match="not a platform error"):
        with exits_on_platform_error("bench_x"):
            raise ValueError("not a platform error")
