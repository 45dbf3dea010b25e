"""The comparison table: baselines, DUPN ablations, single- vs multi-task, sharing designs and task
weightings, trained and scored side by side under one evaluation protocol on the demo world (or, with
``--world taobao``, on the real Taobao log: docs/taobao.md).

    .venv/bin/python -m benchmarks.bench_comparison                                      # every row, 3 seeds
    .venv/bin/python -m benchmarks.bench_comparison --rows dupn_all gbdt --seeds 0 1 2   # a subset
    .venv/bin/python -m benchmarks.bench_comparison --world taobao --config conf/taobao.yaml --name taobao

Protocol (``core/protocol.py``, ``training/evaluation.py``): the training set's training days train,
its validation day selects (each model is scored on validation ``early_stopping.evals_per_epoch``
times per epoch and keeps its best weights; training stops after ``early_stopping.patience``
scorings without improvement, within the budget's cap of 4 epochs), and its test day is scored
once per run. PPP is scored on held-out users. Each row is run with every seed (the model
initialisation and the read order change; the split does not) and reported as mean ± std. The
budget (:data:`BUDGET`: 4 epochs, one torch thread per model) comes before any ``--set``.

Writes ``comparison.md`` and ``comparison.json`` (``--out-dir``, default ``benchmarks/results``) and
logs one MLflow parent run with a child run per row. Prerequisites (the world's training set,
statistics and GBDT features) are built when missing. Finished runs are kept in ``--cache-dir``
(default: the world's runs kept in the repository, ``benchmarks/results/comparison_runs`` or
``taobao_runs``) keyed by the row's resolved settings, the training-set version and the seed, so an
interrupted benchmark resumes and a table that needs more training than one sitting is filled over
several; ``--fresh`` trains again (do so after a change of the model code that no setting records).
Each kept run records where it came from (the commit, its date, the machine, and a fingerprint of the
training set: its rows per day); a run whose fingerprint differs from the data at hand is not used,
so on a fresh clone the command builds the demo world and writes the table from the kept runs.
Heuristic rows (nothing learned) are computed each time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, get_args

from benchmarks import figures
from benchmarks.common import DUPN_ALL, ROOT, WORK, commit, exits_on_platform_error, machine, run_job
from core import tables as t
from core.config import Config, LRScheduleConfig, ModelFamily, load_config
from core.delta import DeltaTables, get_tables
from core.spark import get_spark
from features.gbdt import HISTORY_GROUPS, SIDE_COLUMNS, WINDOWED  # noqa: F401 - re-exported for the rows
from features.priors import TALENT_PRIOR
from training import evaluation as ev
from training.datasets import Statistics, TrainingData, serving_statistics, training_data
from training.experiment import RunOutcome, train_and_test
from training.spec import ModelSpec

logger = logging.getLogger("bench_comparison")

COLUMNS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "l2r_auc", "l2r_ndcg10", "follow_auc", "ppp_accuracy",
           "ppp_accuracy_seen", "ctr_logloss", "ctr_ece")
HEAD = {"ctr_auc": "CTR AUC", "cvr_auc": "CVR AUC (clicked)", "ctcvr_auc": "CTCVR AUC", "l2r_auc": "L2R AUC",
        "l2r_ndcg10": "L2R NDCG@10", "follow_auc": "follow AUC", "ppp_accuracy": "PPP acc. (unseen users)",
        "ppp_accuracy_seen": "PPP acc. (seen users)", "ctr_logloss": "CTR log loss", "ctr_ece": "CTR ECE"}
LOWER_IS_BETTER = ("ctr_logloss", "ctr_ece")
# the task whose single-task model supplies each column of the STL row
COLUMN_TASK = {"ctr_auc": "ctr", "cvr_auc": "ctr", "ctcvr_auc": "ctr", "ctr_logloss": "ctr", "ctr_ece": "ctr",
               "l2r_auc": "l2r", "l2r_ndcg10": "l2r", "follow_auc": "follow", "ppp_accuracy": "ppp",
               "ppp_accuracy_seen": "ppp"}
REFERENCE = "dupn_all"
# the platform's model since 3348ece (conf/local.yaml: training.hybrid, model.prior_pieces, model.side_detached):
# DUPN-all's tower and the heads that train it, and side heads that read the GBDT's summaries and score the tasks
PLATFORM = "dupn_hybrid_detached"
# The category profile (model.category_profile) came after the ablations, designs and weightings were measured:
# those rows leave it out and compare with ``dupn_noprofile``, the platform's model without it.
NOPROFILE = "training.model.category_profile=0"
NOPROFILE_REFERENCE = "dupn_noprofile"
# the platform's model before the weight decay, which the settings tried on it (PROBES) were measured against
NOWD_REFERENCE = "dupn_nowd"
# The behaviours' reference price (model.price_reference) came after every other row was measured: they keep
# the catalogue's (and compare as before); ``dupn_catalogue`` is the platform's model with it.
CATALOGUE = "training.model.price_reference=catalogue"
# So did the average of the weights (training.ema_decay): every row measured before it trains without.
NOEMA = "training.ema_decay=0"
# And so did the target priors (model.target_priors): every neural row measured before them reads none.
NOPRIORS = "training.model.target_priors=false"
# And the weight decay (training.weight_decay, 1e-4 then 3e-4): every neural row measured before it trains without.
NOWD = "training.weight_decay=0"
# The hybrid model (training.hybrid), the priors as pieces and the detached side heads came after every row was
# measured: each row is its own configuration over DUPN-all's (dupn_hybrid* attach their side inputs, the rows with
# the pieces or the detached heads set them), so the comparison's base turns all three off whatever
# conf/local.yaml says.
BASE = DUPN_ALL


@dataclass(frozen=True)
class Row:
    """One row of the table: a model and how it differs from the platform's configuration."""

    key: str
    label: str
    group: str
    overrides: tuple[str, ...] = ()
    kind: str = "neural"  # neural | hybrid | gbdt | feature_mlp | stl | heuristic
    note: str = ""
    feature: str = ""  # heuristic rows: the features/gbdt_examples column that scores
    exclude: tuple[str, ...] = ()  # GBDT, feature-MLP and hybrid rows: hand-crafted features left out
    cache_as: str = ""  # the row name in the run cache's keys, for a row whose runs were made under another name
    tasks: tuple[str, ...] = ()  # feature-MLP rows: only these tasks (ctr brings cvr along); all when empty
    priors: str = ""  # feature-MLP rows: the follow priors at DUPN's fixed knots ("fixed") or as its logs ("logs")
    params: tuple[tuple[str, Any], ...] = ()  # feature-MLP rows: FeatureMLPParams fields set otherwise


# the follow head's target priors are the GBDT's columns of the same names
FOLLOW_PRIORS = TALENT_PRIOR
# the user's history with the target item, which DUPN's heads have no exact match of: every GBDT ablation
# below the first leaves it out, so each is read against the GBDT without it
NOITEM = ("item_n_30d", "item_last_age_h")
LADDER_TASKS = ("ctr", "follow")
# what the hybrid row's heads read beside DUPN-all's inputs: every summary the ladder adds back
HYBRID_COLUMNS = SIDE_COLUMNS


def ladder_rows() -> tuple[Row, ...]:
    """The feature-MLP rows that add :data:`HISTORY_GROUPS` back one at a time, all but the last group (the row
    with every group, ``feature_mlp_ladder_end``, reads the columns of ``feature_mlp``)."""
    rows = []
    for i in range(len(HISTORY_GROUPS)):
        left_out = tuple(f for _, _, group in HISTORY_GROUPS[i:] for f in group)
        kept = [name for name, _, _ in HISTORY_GROUPS[:i]]
        label = ("MLP on the GBDT's features: what DUPN's heads read beside the sequence (the target's columns, "
                 "ranking features, query and talent priors, profile)" if not kept else
                 "... and " + HISTORY_GROUPS[i - 1][1])
        rows.append(Row(f"feature_mlp_{'base' if not kept else '_'.join(['base', *kept])}", label, "feature ladder",
                        kind="feature_mlp", exclude=(*NOITEM, *left_out), tasks=LADDER_TASKS))
    return tuple(rows)


ROWS: tuple[Row, ...] = (
    Row("wide", "Wide (logistic regression, one-hot + crosses)", "baselines",
        ("training.model.family=wide", CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("wide_deep", "Wide&Deep", "baselines", ("training.model.family=wide_deep", CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("dssm", "DSSM (profile + bag of items; item tower)", "baselines",
        ("training.model.family=dssm", CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("cnn_max", "CNN-max", "baselines", ("training.model.family=cnn_max", CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("gbdt", "GBDT (LightGBM, hand-crafted point-in-time features)", "baselines", kind="gbdt"),
    Row("gbdt_noitem", "GBDT without the user's history with the target item (item_n_30d and item_last_age_h "
        "left out; DUPN's heads have no exact-item match either)", "baselines", kind="gbdt",
        exclude=NOITEM),
    Row("gbdt_norecency", "GBDT without the recency of the target's category either (also cat_last_age_h, "
        "cat_last_buy_age_h and cat_recency_rank left out: the GBDT's strongest CTR features, which DUPN's heads "
        "have no exact counterpart of)", "baselines", kind="gbdt",
        exclude=(*NOITEM, "cat_last_age_h", "cat_last_buy_age_h", "cat_recency_rank")),
    Row("gbdt_noprev", "GBDT without earlier days' popularity either (also the item's, category's, talent's and "
        "user's impressions and rates of the days before left out: DUPN learns them only through ids)", "baselines",
        kind="gbdt", exclude=(*NOITEM, "item_imps_prev", "item_ctr_prev", "item_cvr_prev", "cat_imps_prev",
                              "cat_ctr_prev", "item_events_prev", "talent_imps_prev", "talent_follow_rate_prev",
                              "user_follow_imps_prev", "user_follow_rate_prev")),
    Row("gbdt_noprice", "GBDT without the target's price against the user's either (also target_rel_price, "
        "target_price_gap_buy and target_price_gap_deep left out)", "baselines", kind="gbdt",
        exclude=(*NOITEM, "target_rel_price", "target_price_gap_buy", "target_price_gap_deep")),
    Row("gbdt_noquery", "GBDT without the query's category either (also query_category_share and has_query left "
        "out)", "baselines", kind="gbdt",
        exclude=(*NOITEM, "query_category_share", "has_query")),
    Row("feature_mlp", "MLP on the GBDT's features (the same columns and rows as the GBDT without the user's history "
        "with the target item; piecewise-linear encoding; one network per task)", "baselines", kind="feature_mlp",
        exclude=NOITEM),
    Row("feature_mlp_follow_headrecipe", "MLP on the GBDT's follow columns trained as DUPN's follow head is (one "
        "hidden layer of 64, an L2 penalty of 3e-4, step 0.002, batches of 256)", "follow inputs", kind="feature_mlp",
        exclude=NOITEM, tasks=("follow",),
        params=(("hidden", (64,)), ("weight_decay", 3e-4), ("lr", 2e-3), ("batch_size", 256))),
    Row("feature_mlp_follow_nopriors", "MLP on the GBDT's follow columns without the talent's and the user's "
        "earlier follow counts and rates (the four target priors)", "follow inputs", kind="feature_mlp",
        exclude=(*NOITEM, *FOLLOW_PRIORS), tasks=("follow",)),
    Row("feature_mlp_follow_logpriors", "MLP on the GBDT's follow columns, the four priors entering as DUPN's follow "
        "head reads them (their logs, each one linear input) instead of piecewise-linear pieces", "follow inputs",
        kind="feature_mlp", exclude=NOITEM, tasks=("follow",), priors="logs"),
    Row("feature_mlp_follow_fixedpriors", "MLP on the GBDT's follow columns, the four priors as pieces at the fixed "
        "knots of model.prior_pieces instead of the training quantiles", "follow inputs", kind="feature_mlp",
        exclude=NOITEM, tasks=("follow",), priors="fixed"),
    *ladder_rows(),
    Row("feature_mlp_ladder_end", "... and " + HISTORY_GROUPS[-1][1] + " (every column of feature_mlp)",
        "feature ladder", kind="feature_mlp", exclude=NOITEM, tasks=LADDER_TASKS),
    Row("popularity", "Popularity (the item's events in the 7 days before; nothing learned)", "baselines",
        kind="heuristic", feature="item_events_prev"),
    Row("recent_category", "Recently interacted category (the user's share of events in the target's category, "
        "1-day half-life; nothing learned)", "baselines", kind="heuristic", feature="cat_decayed_share_1d"),
    Row("dupn_nobp", "DUPN-nobp (no behaviour properties)", "DUPN ablations",
        ("training.model.property_in=none", "training.model.recency_interests=0", NOPROFILE, CATALOGUE, NOEMA,
         NOPRIORS, NOWD)),
    Row("dupn_bplstm", "DUPN-bplstm (properties in the LSTM)", "DUPN ablations",
        ("training.model.property_in=lstm", "training.model.recency_interests=0", NOPROFILE, CATALOGUE, NOEMA,
         NOPRIORS, NOWD)),
    Row("dupn_bpatt", "DUPN-bpatt (properties in the attention)", "DUPN ablations",
        ("training.model.property_in=attention", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    # its runs were made as the row that tried the weight decay of 3e-4, before it became the platform's
    Row(REFERENCE, "DUPN-all (the platform's tower and the heads that train it; its model until the side heads)",
        "DUPN ablations", ("training.model.property_in=all",),
        cache_as="dupn_wd3e4"),
    # the platform's model before the weight decay: its runs were made as the row that tried the target priors
    Row(NOWD_REFERENCE, "DUPN-all without the weight decay (the platform's model before it; the reference of the "
        "settings tried on it)", "DUPN ablations", ("training.model.property_in=all", NOWD), cache_as="dupn_priors"),
    # settings tried on the platform's model of 2026-12-06 (the priors on), each against DUPN-all's runs on validation
    Row("dupn_cosine", "DUPN-all with the learning rate on a cosine from lr to 0 over 2 epochs", "DUPN ablations",
        ("training.model.property_in=all", "training.lr_schedule.kind=cosine", "training.lr_schedule.epochs=2", NOWD)),
    Row("dupn_linear3", "DUPN-all with the learning rate falling linearly from lr to 0 over 3 epochs",
        "DUPN ablations",
        ("training.model.property_in=all", "training.lr_schedule.kind=linear", "training.lr_schedule.epochs=3", NOWD)),
    Row("dupn_head128", "DUPN-all with heads of 128 hidden units (64 in the platform's model)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.head_hidden=128", NOWD)),
    Row("dupn_by_behavior", "DUPN-all with time-decay pools that also weigh behaviour types (so a pool, and its "
        "category profile, can follow e.g. the purchases)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.recency_by_behavior=true", NOWD)),
    Row("dupn_purchase_pool", "DUPN-all with a time-decay pool of the purchases alone (its interest, decayed count "
        "and category profile)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.purchase_pool=true", NOWD)),
    Row("dupn_wd1e5", "DUPN-all with an L2 penalty of 1e-5 on the weights (training.weight_decay; 3e-4 in the "
        "platform's model)", "DUPN ablations",
        ("training.model.property_in=all", "training.weight_decay=1e-5")),
    Row("dupn_wd1e4", "DUPN-all with an L2 penalty of 1e-4 on the weights (training.weight_decay; the platform's "
        "from cd4c725 until 3e-4 replaced it)", "DUPN ablations",
        ("training.model.property_in=all", "training.weight_decay=1e-4")),
    Row("dupn_wd3e4", "DUPN-all with an L2 penalty of 3e-4 on the weights (training.weight_decay; tried, then "
        "kept)", "DUPN ablations", ("training.model.property_in=all", "training.weight_decay=3e-4")),
    Row("dupn_wd1e3", "DUPN-all with an L2 penalty of 1e-3 on the weights (training.weight_decay; 3e-4 in the "
        "platform's model)", "DUPN ablations", ("training.model.property_in=all", "training.weight_decay=1e-3")),
    Row("dupn_price_gaps", "DUPN-all with price match features (model.price_match: the target's price gap to the "
        "user's mean price of each behaviour type; tried before on the model without the weights' average, the "
        "target priors and the weight decay)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.price_match=true")),
    Row("dupn_hybrid", "DUPN-all whose item and follow heads also read the GBDT's summaries of the user's history "
        "(every column the feature ladder adds back, as piecewise-linear pieces; model.side_inputs)",
        "DUPN ablations", ("training.model.property_in=all",), kind="hybrid"),
    Row("dupn_hybrid_price", "DUPN-all whose item and follow heads also read the GBDT's summaries of the user's "
        "prices alone (the ladder's price group)", "DUPN ablations", ("training.model.property_in=all",),
        kind="hybrid", exclude=tuple(f for name, _, group in HISTORY_GROUPS if name != "price" for f in group)),
    Row("dupn_hybrid_notalent", "dupn_hybrid whose follow head reads the talent's category but not its id (no "
        "talent-id embedding: model.talent_dim 0)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.talent_dim=0"), kind="hybrid"),
    Row("dupn_hybrid_nofollowin", "dupn_hybrid whose follow head does not read the shared representation (its "
        "task input): only the talent's embeddings, the match features, the priors and the summaries "
        "(model.follow_task_input false)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.follow_task_input=false"), kind="hybrid"),
    Row("dupn_hybrid_follow", "dupn_hybrid trained on the follow task alone (the feature MLP trains one network per "
        "task)", "DUPN ablations", ("training.model.property_in=all", "training.tasks=[follow]"), kind="hybrid"),
    Row("dupn_hybrid_pieces", "dupn_hybrid whose heads read the target priors as piecewise-linear pieces "
        "(model.prior_pieces)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.prior_pieces=true"), kind="hybrid"),
    Row(PLATFORM, "dupn_hybrid_pieces whose side heads read the tower's outputs with their gradient stopped, while "
        "heads without side inputs train the tower as DUPN-all's do (model.side_detached; the platform's model)",
        "DUPN ablations", ("training.model.property_in=all", "training.model.prior_pieces=true",
                           "training.model.side_detached=true"), kind="hybrid"),
    Row("dupn_prior_pieces", "DUPN-all whose heads read the target priors as piecewise-linear pieces at fixed "
        "knots instead of logs (model.prior_pieces)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.prior_pieces=true")),
    Row("dupn_top_share", "DUPN-all whose heads also read each pool's count in the target's category over its count "
        "in the user's top category (model.profile_top_share)", "DUPN ablations",
        ("training.model.property_in=all", "training.model.profile_top_share=true")),
    Row("dupn_nopriors", "DUPN-all without the target priors (the platform's model before them)", "DUPN ablations",
        ("training.model.property_in=all", NOPRIORS, NOWD), cache_as=REFERENCE),
    Row("dupn_catalogue", "DUPN-all with prices relative to the catalogue's mean, without the average of the weights "
        "(the platform's model before both)", "DUPN ablations",
        ("training.model.property_in=all", CATALOGUE, NOEMA, NOPRIORS, NOWD),
        cache_as=REFERENCE),
    Row("dupn_price_match", "DUPN-all with price match features, without the average of the weights (tried, not kept: "
        "no gain on validation over the next row)",
        "DUPN ablations", ("training.model.property_in=all", "training.model.price_match=true", NOEMA, NOPRIORS, NOWD),
        cache_as=REFERENCE),
    Row("dupn_noema", "DUPN-all without the average of the weights (the platform's model before it)",
        "DUPN ablations", ("training.model.property_in=all", NOEMA, NOPRIORS, NOWD), cache_as=REFERENCE),
    Row("dupn_ema995", "DUPN-all with a shorter average of the weights (decay 0.995; tried, not kept)",
        "DUPN ablations", ("training.model.property_in=all", "training.ema_decay=0.995", NOPRIORS, NOWD),
        cache_as=REFERENCE),
    Row("dupn_noprofile", "DUPN-all without the category profile (the platform's model before it; the reference of "
        "the ablations, designs and weightings, all measured without it)", "DUPN ablations",
        ("training.model.property_in=all", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD), cache_as=REFERENCE),
    Row("dupn_nopools", "DUPN-all without the time-decay pools (the platform's model before them)", "DUPN ablations",
        ("training.model.recency_interests=0", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("dupn_paper", "DUPN-all with the paper's heads (one attention, no match features, linear tier and "
        "ranking heads)", "DUPN ablations",
        ("training.model.attention_heads=1", "training.model.match_features=false", "training.model.ppp_hidden=0",
         "training.model.l2r_item_score=false", "training.model.recency_interests=0", NOPROFILE, CATALOGUE, NOEMA,
         NOPRIORS, NOWD)),
    Row("dupn_stl", "DUPN single-task (one model per task)", "single- vs multi-task",
        (NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD),
        kind="stl"),
    Row("mtl_shared_bottom", "shared-bottom", "sharing designs",
        ("training.model.architecture=shared_bottom", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("mtl_mmoe", "MMoE", "sharing designs",
        ("training.model.architecture=mmoe", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("mtl_cgc", "CGC", "sharing designs",
        ("training.model.architecture=cgc", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("mtl_ple", "PLE (2 levels)", "sharing designs",
        ("training.model.architecture=ple", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("mtl_cross_stitch", "cross-stitch", "sharing designs",
        ("training.model.architecture=cross_stitch", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("w_fixed", "fixed weights (1 each)", "task weightings",
        ("training.weighting.kind=fixed", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("w_uncertainty", "uncertainty (Kendall et al.)", "task weightings",
        ("training.weighting.kind=uncertainty", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
    Row("w_gradnorm", "GradNorm (Chen et al.)", "task weightings",
        ("training.weighting.kind=gradnorm", NOPROFILE, CATALOGUE, NOEMA, NOPRIORS, NOWD)),
)


# ---------------------------------------------------------------------- preparation
WORLDS = ("demo", "taobao")
# the benchmark's budget, before any --set: a cap of 4 epochs with early stopping on validation, one
# torch thread per model (so that two rows can run side by side on 2 cores)
BUDGET = ("training.epochs=4", "training.torch_threads=1")
RUNS = {"demo": ROOT / "benchmarks" / "results" / "comparison_runs",
        "taobao": ROOT / "benchmarks" / "results" / "taobao_runs"}
# the rows the Taobao log supports (issue: follows and PPP tiers do not exist there), in run order
TAOBAO_ROWS = ("dupn_all", "dupn_noprofile", "gbdt", "gbdt_noitem", "popularity", "recent_category", "wide_deep",
               "dssm", "cnn_max", "dupn_nobp", "dupn_bplstm", "dupn_bpatt", "dupn_stl")


def world_days(world: str, cfg: Config) -> tuple[str, str]:
    """The first and last day of the world's training set (training days, validation day, test day)."""
    if world == "taobao":
        from features.taobao import ImportSettings
        from scripts.taobao import HISTORY_DAYS

        days = ImportSettings().label_days()
        return days[HISTORY_DAYS].isoformat(), days[-1].isoformat()
    first = cfg.demo.start_date
    last = first + dt.timedelta(days=cfg.demo.days - 1)
    return (first + dt.timedelta(days=4)).isoformat(), last.isoformat()


def prepare(config: str, overrides: Sequence[str], cfg: Config, tables: DeltaTables, world: str = "demo") -> None:
    """Build the world's input tables (the demo world's generator, or the Taobao import from its default
    source), its training set, statistics and GBDT features where missing."""
    from features.gbdt import gbdt_spec

    start, end = world_days(world, cfg)
    if not tables.exists(t.EVENTS):
        run_job(config, overrides,
                "jobs.import_taobao_userbehavior" if world == "taobao" else "jobs.generate_demo_world")
    if not tables.exists(t.USER_SEQUENCES) or end not in tables.partitions(t.USER_SEQUENCES):
        run_job(config, overrides, "jobs.build_sequences", "--date", end)
    if not tables.exists(t.TRAINING_EXAMPLES) or not (tables.last_metadata(t.TRAINING_EXAMPLES).get("splits")):
        run_job(config, overrides, "jobs.build_training_set", "--start", start, "--end", end)
    if not tables.exists(t.FEATURE_STATS) or end not in tables.partitions(t.FEATURE_STATS):
        run_job(config, overrides, "jobs.feature_stats", "--date", end,
                "--training-start", start, "--training-end", end)
    spec = gbdt_spec(cfg.inputs.rank_features_dim)
    version = tables.version(t.TRAINING_EXAMPLES)
    if not tables.exists(spec) or tables.last_metadata(spec).get("training_examples_version") != version:
        days = tables.partitions(t.TRAINING_EXAMPLES, version)
        run_job(config, overrides, "jobs.build_gbdt_features", "--start", days[0],
                "--end", days[-1])


# ---------------------------------------------------------------------- running
def data_fingerprint(data: TrainingData) -> str:
    """The training set's rows per split and day (Parquet footers only), hashed: equal for the same
    demo world built by the same code, whatever its file names."""
    import pyarrow.parquet as pq

    rows: dict[str, int] = {}
    for split, files in (("train", data.train_files), ("valid", data.valid_files), ("test", data.test_files)):
        for f in files:
            day = next((p[3:] for p in f.split("/") if p.startswith("dt=")), "?")
            key = f"{split}/{day}"
            rows[key] = rows.get(key, 0) + pq.ParquetFile(f.removeprefix("file://")).metadata.num_rows
    text = json.dumps(sorted(rows.items()))
    return f"{sum(rows.values())} rows, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}"


# Model settings added after runs were cached, with their default and the families that read them:
# left out of a run's key where they cannot change the model (at their default, or in a family that
# does not read them), so the runs made before they existed stay valid.
LATER_MODEL_FIELDS: dict[str, tuple[Any, frozenset[str]]] = {
    "recency_interests": (0, frozenset({"dupn"})),
    "recency_by_behavior": (False, frozenset({"dupn"})),
    "purchase_pool": (False, frozenset({"dupn"})),
    "category_profile": (0, frozenset({"dupn"})),
    "price_reference": ("catalogue", frozenset(get_args(ModelFamily))),
    "price_match": (False, frozenset({"dupn"})),
    "profile_top_share": (False, frozenset({"dupn"})),
    "target_priors": (False, frozenset({"dupn", "cnn_max", "wide_deep"})),
    "side_inputs": (0, frozenset({"dupn"})),
    "follow_task_input": (True, frozenset({"dupn"})),
    "prior_pieces": (False, frozenset({"dupn", "cnn_max", "wide_deep"})),
    "side_detached": (False, frozenset({"dupn"})),
}
# Later model settings that only act with another one set (the run keys of the hybrid rows hold them)
LATER_MODEL_SUBFIELDS: dict[str, str] = {"side_bins": "side_inputs", "prior_pieces": "target_priors",
                                         "side_detached": "side_inputs"}
# Rows that vary the platform's model as it is (made after the target priors, which they keep on).
PROBES = ("dupn_cosine", "dupn_linear3", "dupn_head128", "dupn_by_behavior", "dupn_purchase_pool", "dupn_wd1e5",
          "dupn_wd1e4", "dupn_wd3e4", "dupn_wd1e3", "dupn_top_share", "dupn_price_gaps", "dupn_prior_pieces")
# Training settings added later, with the value that reproduces the runs made before them.
LATER_EARLY_STOPPING_FIELDS: dict[str, Any] = {"min_rows": 0}
LATER_TRAINING_FIELDS: dict[str, Any] = {"ema_decay": 0.0, "lr_schedule": LRScheduleConfig().model_dump(),
                                         "hybrid": False}
# and of the spec: the hybrid model's side columns and knots (jobs/train; the comparison's hybrid rows attach ranks)
LATER_SPEC_FIELDS: dict[str, Any] = {"side_columns": [], "side_knots": []}


def _without_later_fields(part: Any) -> Any:
    """A resolved spec or training config without the settings added later that cannot change its run."""
    if not isinstance(part, dict):
        return part
    later = {**LATER_TRAINING_FIELDS, **LATER_SPEC_FIELDS}
    out = {k: v for k, v in part.items() if k not in later or v != later[k]}
    model = part.get("model")
    if isinstance(model, dict):
        def acts(k: str, v: Any) -> bool:
            if k in LATER_MODEL_SUBFIELDS and not acts(LATER_MODEL_SUBFIELDS[k], model.get(LATER_MODEL_SUBFIELDS[k])):
                return False
            return k not in LATER_MODEL_FIELDS or (v != LATER_MODEL_FIELDS[k][0]
                                                   and model.get("family") in LATER_MODEL_FIELDS[k][1])
        out["model"] = {k: v for k, v in model.items() if acts(k, v)}
        # the spec's tower_log_priors (35d71b4) acts only on a detached model whose side heads read the priors as
        # pieces; runs made before it existed are its False
        pieces = all(acts(k, model.get(k, LATER_MODEL_FIELDS[k][0])) for k in ("side_detached", "prior_pieces"))
        if "tower_log_priors" in out and (not pieces or out["tower_log_priors"] is False):
            del out["tower_log_priors"]
    stopping = part.get("early_stopping")
    if isinstance(stopping, dict):
        out["early_stopping"] = {k: v for k, v in stopping.items()
                                 if k not in LATER_EARLY_STOPPING_FIELDS or v != LATER_EARLY_STOPPING_FIELDS[k]}
    return out


def _rounded(value: Any) -> Any:
    """Floats to 10 significant digits, and 0 below 1e-9: statistics computed by Spark differ in their
    last bits with the order of a sum (e.g. after a change of the query plan; a mean of 2e-17 or
    1.9e-17 is a mean of 0), which must not make a run another run."""
    if isinstance(value, float):
        return 0.0 if abs(value) < 1e-9 else float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _cache_key(row: Row, resolved: dict[str, Any], version: int, seed: int) -> str:
    resolved = _rounded({k: _without_later_fields(v) for k, v in resolved.items()})
    text = json.dumps({"row": row.cache_as or row.key, "resolved": resolved, "version": version, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class NotRun(Exception):
    """A (row, seed) outcome that is not in the cache, under ``--cached-only``."""


def follow_prior_encoding(kind: str, splits: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, list[float]]]:
    """The splits (``features/gbdt_examples`` arrays, the training split first) and the fixed knots with which a
    feature-MLP row reads :data:`FOLLOW_PRIORS` as DUPN's follow head does: ``fixed``, pieces at the knots of
    ``model.prior_pieces``; ``logs``, the head's log encoding (``training.model.follow_priors``), each column one
    piece from its least to its largest training value, i.e. one linear input."""
    import numpy as np
    import torch

    from training.model import FOLLOW_PRIOR_KNOTS, follow_priors

    if kind == "fixed":
        return tuple(splits), {c: list(k) for c, k in zip(FOLLOW_PRIORS, FOLLOW_PRIOR_KNOTS)}
    if kind != "logs":
        raise ValueError(f"Row.priors {kind!r}: use fixed or logs")
    out = []
    for d in splits:
        raw = torch.as_tensor(np.stack([np.asarray(d[c], np.float32) for c in FOLLOW_PRIORS], axis=1))
        logs = follow_priors({"talent_prior": raw}, torch.arange(raw.shape[0])).numpy()
        out.append({**d, **{c: logs[:, j] for j, c in enumerate(FOLLOW_PRIORS)}})
    knots = {c: [float(np.nanmin(out[0][c])), float(np.nanmax(out[0][c]))] for c in FOLLOW_PRIORS}
    return tuple(out), knots


class RunCache:
    """Finished runs, one JSON file per (row settings, data version, seed) key, each stamped with where
    it came from; a run made from other data (another fingerprint) is not used."""

    def __init__(self, folder: Path, fingerprint: str, fresh: bool = False, cached_only: bool = False) -> None:
        self.folder, self.fingerprint, self.fresh, self.cached_only = folder, fingerprint, fresh, cached_only
        self.folder.mkdir(parents=True, exist_ok=True)
        self.commits: set[str] = set()  # of the runs used

    def get(self, key: str, make: Callable[[], RunOutcome]) -> RunOutcome:
        path = self.folder / f"{key}.json"
        if path.exists() and not self.fresh:
            record = json.loads(path.read_text())
            made = record.pop("provenance", {})
            if made.get("data", self.fingerprint) == self.fingerprint:
                self.commits.add(made.get("commit", "unknown"))
                return RunOutcome.from_dict(record)
            logger.warning("%s: made from other data (%s, now %s): not used", path, made.get("data"), self.fingerprint)
        if self.cached_only:
            raise NotRun(key)
        outcome = make()
        made = {"commit": commit(), "date": dt.date.today().isoformat(), "machine": machine(),
                "data": self.fingerprint}
        path.write_text(json.dumps({**outcome.as_dict(), "provenance": made}, default=float))
        self.commits.add(made["commit"])
        return outcome


class Runner:
    """Runs (or takes from the cache) every (row, seed) outcome."""

    def __init__(self, config: str, cfg: Config, tables: DeltaTables, data: TrainingData, stats: Statistics,
                 fresh: bool, overrides: Sequence[str], cached_only: bool = False, cache: Path | None = None) -> None:
        self.config, self.cfg, self.tables, self.data, self.stats = config, cfg, tables, data, stats
        self.cache = RunCache(cache or WORK / "comparison", data_fingerprint(data), fresh, cached_only)
        self.overrides = list(overrides)
        self._gbdt_data: tuple[Any, Any, Any, Any] | None = None
        self._side_tables: dict[tuple[tuple[str, ...], int], Any] = {}

    def row_config(self, row: Row, extra: Sequence[str] = ()) -> Config:
        return load_config(self.config, [*BASE, *self.overrides, *row.overrides, *extra])

    def _neural_spec(self, row: Row, extra: Sequence[str]) -> tuple[Config, ModelSpec, dict[str, Any]]:
        """A neural row's configuration (with ``extra`` overrides), its model spec, and what its cache key
        resolves."""
        cfg = self.row_config(row, extra)
        spec = ModelSpec.from_config(cfg, tasks=[x for x in cfg.training.tasks if x in self.data.tasks],
                                     logit_offsets=self.data.logit_offsets,
                                     **self.stats.model_inputs(cfg.training.model.price_reference))
        return cfg, spec, {"spec": spec.to_dict(), "training": cfg.training.model_dump(mode="json")}

    def neural(self, row: Row, seed: int, tasks: Sequence[str] | None = None, name: str | None = None) -> RunOutcome:
        extra = [f"training.tasks=[{','.join(tasks)}]"] if tasks else []
        cfg, spec, resolved = self._neural_spec(row, extra)
        key = _cache_key(row, resolved, self.data.version, seed)
        return self.cache.get(key, lambda: train_and_test(name or row.key, spec, cfg.training, self.data, seed))

    def _gbdt_files(self) -> dict[str, list[str]]:
        """The files of ``features/gbdt_examples``' training, validation and test days (its latest version)."""
        from features.gbdt import gbdt_spec

        spec = gbdt_spec(self.cfg.inputs.rank_features_dim)
        version = self.tables.version(spec)
        return {s: self.tables.files(spec, list(days), version)
                for s, days in (("train", self.data.train_days), ("valid", self.data.valid_days),
                                ("test", self.data.test_days))}

    def _gbdt_splits(self, cols: Sequence[str]) -> tuple[Any, Any, Any]:
        """The GBDT examples' training, validation and test splits (columns ``cols`` and the keys), read once."""
        from training.gbdt import load_split

        if self._gbdt_data is None:
            files = self._gbdt_files()
            self._gbdt_data = (load_split(files["train"], cols), load_split(files["valid"], cols),
                               load_split(files["test"], cols), cols)
        train, valid, test, _ = self._gbdt_data
        return train, valid, test

    def hybrid(self, row: Row, seed: int) -> RunOutcome:
        """DUPN (the row's configuration) whose heads also read :data:`HYBRID_COLUMNS` of
        ``features/gbdt_examples`` but the row's exclusions (:mod:`training.side_inputs`)."""
        from features.gbdt import gbdt_spec
        from training.gbdt import load_split
        from training.side_inputs import SideTable, SideWorkload

        columns = [f for f in HYBRID_COLUMNS if f not in row.exclude]
        cfg, spec, resolved = self._neural_spec(row, [f"training.model.side_inputs={len(columns)}"])
        resolved["side"] = {"columns": columns,
                            "gbdt_version": self.tables.version(gbdt_spec(self.cfg.inputs.rank_features_dim))}
        key = _cache_key(row, resolved, self.data.version, seed)

        def make() -> RunOutcome:
            bins = cfg.training.model.side_bins
            if (tuple(columns), bins) not in self._side_tables:  # read once for every seed of the row
                files = self._gbdt_files()
                splits = {s: load_split(f, ["example_id", *columns]) for s, f in files.items()}
                self._side_tables[(tuple(columns), bins)] = SideTable.build(list(splits.values()), splits["train"],
                                                                            columns, bins)
            table = self._side_tables[(tuple(columns), bins)]
            return train_and_test(row.key, spec, cfg.training, self.data, seed, work=SideWorkload(spec, table))
        return self.cache.get(key, make)

    def _gbdt_columns(self) -> list[str]:
        from features.gbdt import feature_columns

        return sorted(feature_columns(self.cfg.inputs.rank_features_dim))

    def _hand_crafted(self, row: Row) -> tuple[dict[str, list[str]], int]:
        """The GBDT's columns of each task without the row's exclusions, and the version of the table they are
        read from (``features/gbdt_examples``): what a GBDT or feature-MLP row's cache key resolves."""
        from features.gbdt import gbdt_spec, task_features

        rank_dim = self.cfg.inputs.rank_features_dim
        features = {task: [f for f in task_features(task, rank_dim) if f not in row.exclude]
                    for task in ("ctr", "cvr", "l2r", "follow", "ppp")}
        return features, self.tables.version(gbdt_spec(rank_dim))

    @staticmethod
    def _tabular_outcome(row: Row, seed: int, res: Any, extra: dict[str, Any]) -> RunOutcome:
        """A :class:`training.gbdt.GBDTResult` (of the GBDT or the feature MLP) as one run of the table."""
        return RunOutcome(name=row.key, seed=seed, test=ev.metrics(res.test), valid=ev.metrics(res.valid),
                          selected_step=math.nan, selected_epoch=math.nan, evals=[],
                          train_seconds=res.train_seconds, train_samples=res.train_examples,
                          train_rows=res.train_examples, stopped_early=True, parameters=0, extra=extra)

    def gbdt(self, row: Row, seed: int) -> RunOutcome:
        from training.gbdt import GBDTParams, run_gbdt

        params = GBDTParams()
        features, version = self._hand_crafted(row)
        resolved = {"params": params.__dict__, "features": features, "gbdt_version": version}
        key = _cache_key(row, resolved, self.data.version, seed)

        def make() -> RunOutcome:
            train, valid, test = self._gbdt_splits(self._gbdt_columns())
            res = run_gbdt(train, valid, test, features, self.data.tasks, params, seed)
            return self._tabular_outcome(row, seed, res, {"trees": res.rounds, "importance": res.importance})
        return self.cache.get(key, make)

    def feature_mlp(self, row: Row, seed: int) -> RunOutcome:
        """A network per task on the GBDT's columns (:mod:`training.feature_mlp`): the trees' inputs, a network's
        model class."""
        from training.feature_mlp import FeatureMLPParams, run_feature_mlp

        params = FeatureMLPParams(threads=self.cfg.training.torch_threads or 1, **dict(row.params))
        features, version = self._hand_crafted(row)
        resolved = {"params": {k: v for k, v in params.__dict__.items() if k != "threads"}, "features": features,
                    "gbdt_version": version, **({"tasks": list(row.tasks)} if row.tasks else {}),
                    **({"priors": row.priors} if row.priors else {})}
        key = _cache_key(row, resolved, self.data.version, seed)

        def make() -> RunOutcome:
            train, valid, test = self._gbdt_splits(self._gbdt_columns())
            knots = None
            if row.priors:
                (train, valid, test), knots = follow_prior_encoding(row.priors, (train, valid, test))
            tasks = [x for x in self.data.tasks if not row.tasks or x in row.tasks]
            res = run_feature_mlp(train, valid, test, features, tasks, params, seed, knots=knots)
            return self._tabular_outcome(row, seed, res, {"epochs": res.rounds})
        return self.cache.get(key, make)

    def heuristic(self, row: Row, seed: int) -> RunOutcome:
        """A one-feature score, nothing learned: the same for every seed (computed, never cached)."""
        from training.gbdt import heuristic_metrics, heuristic_predictions

        _, valid, test = self._gbdt_splits(self._gbdt_columns())
        started = time.perf_counter()
        tasks = [x for x in self.data.tasks if x in ("ctr", "l2r")]
        scored = {name: heuristic_metrics(heuristic_predictions(split, row.feature, tasks))
                  for name, split in (("valid", valid), ("test", test))}
        return RunOutcome(name=row.key, seed=seed, test=scored["test"], valid=scored["valid"],
                          selected_step=math.nan, selected_epoch=math.nan, evals=[],
                          train_seconds=time.perf_counter() - started, train_samples=0, train_rows=0,
                          stopped_early=True, parameters=0, extra={"feature": row.feature})

    def stl(self, row: Row, seed: int) -> RunOutcome:
        parts = {task: self.neural(row, seed, [task], name=f"{row.key}_{task}") for task in self.data.tasks}
        test = {c: parts[task].test.get(c, math.nan) for c, task in COLUMN_TASK.items() if task in parts}
        valid = {c: parts[task].valid.get(c, math.nan) for c, task in COLUMN_TASK.items() if task in parts}
        return RunOutcome(name=row.key, seed=seed, test=test, valid=valid, selected_step=math.nan,
                          selected_epoch=math.nan, evals=[],
                          train_seconds=sum(p.train_seconds for p in parts.values()),
                          train_samples=sum(p.train_samples for p in parts.values()),
                          train_rows=sum(p.train_rows for p in parts.values()), stopped_early=True,
                          parameters=sum(p.parameters for p in parts.values()),
                          extra={"per_task": {k: {"selected_epoch": p.selected_epoch, "train_seconds": p.train_seconds}
                                              for k, p in parts.items()}})

    def run(self, row: Row, seed: int) -> RunOutcome:
        if row.kind == "gbdt":
            return self.gbdt(row, seed)
        if row.kind == "feature_mlp":
            return self.feature_mlp(row, seed)
        if row.kind == "stl":
            return self.stl(row, seed)
        if row.kind == "hybrid":
            return self.hybrid(row, seed)
        if row.kind == "heuristic":
            return self.heuristic(row, seed)
        return self.neural(row, seed)


# ---------------------------------------------------------------------- reporting
@dataclass
class RowResult:
    row: Row
    outcomes: list[RunOutcome]
    same_as: str = ""
    summary: dict[str, ev.Summary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = {c: ev.summarize(o.test.get(c, math.nan) for o in self.outcomes) for c in COLUMNS}

    def seconds(self) -> ev.Summary:
        return ev.summarize(o.train_seconds for o in self.outcomes)

    def rate(self) -> ev.Summary:
        return ev.summarize(o.samples_per_second for o in self.outcomes)

    def epochs(self) -> ev.Summary:
        return ev.summarize(o.selected_epoch for o in self.outcomes)

    def at_cap(self) -> int:
        """Runs whose best validation scoring was their last one: still improving when the epoch cap
        stopped them (not converged within the budget)."""
        return sum(1 for o in self.outcomes
                   if o.evals and o.selected_step == max(e.get("step", -1.0) for e in o.evals))

    def missing(self, seeds: Sequence[int]) -> list[int]:
        have = {o.seed for o in self.outcomes}
        return [s for s in seeds if s not in have]


def _fmt(s: ev.Summary, digits: int = 4) -> str:
    return s.describe(digits)


def lift_share(value: float, oracle: float) -> float:
    """(AUC - 0.5) / (oracle - 0.5): the share of the oracle's lift over chance."""
    return (value - 0.5) / (oracle - 0.5) if oracle > 0.5 else math.nan


def markdown(results: list[RowResult], oracle: dict[str, float], context: dict[str, Any]) -> str:
    ref = next((r for r in results if r.row.key == REFERENCE), None)
    lines = [
        "# Comparison: baselines, DUPN ablations, single- vs multi-task, sharing designs, task weightings", "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}; date {context['date']}; training time summed over the runs "
        f"{context['train_minutes']:.0f} min (this invocation: {context['wall_minutes']:.0f} min wall"
        f"{', from the cache' if context.get('cached_only') else ''}).  ",
        f"Data: {context['data']}"
        + (f" (fingerprint: {context['data_fingerprint']})" if context.get("data_fingerprint") else "") + ".  ",
        *([f"Runs made at commit(s): {', '.join(context['runs_made_at'])}.  "] if context.get("runs_made_at") else []),
        f"Protocol: {context['protocol']}  ",
        f"Budget: {context['budget']}", *([f"Note: {context['note']}"] if context.get("note") else []), "",
        "Each cell: test mean ± std over the seeds " + ", ".join(str(s) for s in context["seeds"]) + ". In a column, "
        "**bold** is the best row, and `≈` marks a row within noise of it (|Δ mean| ≤ 2 standard errors of the seeds; "
        "`training/evaluation.py:within_noise`). PPP accuracy is on users whose tier labels never reached training; "
        "the seen users' accuracy is beside it.", ""]
    # columns no row and no oracle has (a task the world lacks) are left out
    cols = [c for c in COLUMNS if c in oracle or any(r.summary[c].n for r in results)]
    marked = [c for c in COLUMNS[:7] if c in cols]
    best: dict[str, RowResult] = {}
    for c in cols:
        cands = [r for r in results if not math.isnan(r.summary[c].mean)]
        if cands:
            pick = min if c in LOWER_IS_BETTER else max
            best[c] = pick(cands, key=lambda r: r.summary[c].mean)
    header = ("| group | model | " + " | ".join(HEAD[c] for c in cols) +
              " | train s | examples/s | epochs chosen | best at cap |")
    lines += [header, "|" + "---|" * 2 + "---:|" * (len(cols) + 4)]
    for r in results:
        cells = []
        for c in cols:
            s = r.summary[c]
            text = _fmt(s)
            if c in best and s.n:
                if best[c] is r:
                    text = f"**{text}**"
                elif ev.within_noise(s, best[c].summary[c]):
                    text = f"≈ {text}"
            cells.append(text)
        label = r.row.label + (f" (= {r.same_as})" if r.same_as else "")
        missing = r.missing(context["seeds"])
        if missing:
            label += (" — **not run**" if not r.outcomes else
                      f" — **{len(r.outcomes)} of {len(context['seeds'])} seeds**")
        cap = f"{r.at_cap()}/{len(r.outcomes)}" if r.outcomes and r.row.kind in ("neural", "hybrid") else "–"
        lines.append(f"| {r.row.group} | {label} | " + " | ".join(cells) +
                     f" | {_fmt(r.seconds(), 0)} | {_fmt(r.rate(), 0)} | {_fmt(r.epochs(), 2)} | {cap} |")
    if oracle:
        lines.append("| oracle | the world's own probabilities | " +
                     " | ".join(f"{oracle[c]:.4f}" if c in oracle else "–" for c in cols) + " | | | | |")
    lines += ["", "*best at cap*: runs whose best validation scoring was their last one, i.e. still improving "
              "when the epoch cap stopped them."]
    platform = next((r for r in results if r.row.key == PLATFORM and r.outcomes), None)
    for row, name in ((ref, "DUPN-all"), (platform, "The platform's model")):
        if row is not None and oracle:
            lines += _targets(row, name, oracle)
    if ref is not None:
        lines += _against(ref, [r for r in results if r is not ref and not r.same_as], marked,
                          "## DUPN-all against every other row")
    if platform is not None:
        lines += _against(platform, [r for r in results if r is not platform and not r.same_as], marked,
                          "## The platform's model against every other row",
                          f"The platform's model is the row {PLATFORM} (conf/local.yaml: training.hybrid with "
                          "model.prior_pieces and model.side_detached). ")
    paired = next((r for r in results if r.row.key == context.get("pair_with", REFERENCE) and r.outcomes), None)
    if paired is not None:
        lines += validation_table(paired, [r for r in results if not r.same_as])
    base = next((r for r in results if r.row.key == NOPROFILE_REFERENCE and r.summary["ctr_auc"].n), None)
    if base is not None:
        lines += _against(base, [r for r in results if NOPROFILE in r.row.overrides and r is not base
                                 and not r.same_as], marked,
                          "## DUPN-all without the category profile against the rows measured without it",
                          "The fair reading of the ablations, single-task, designs and weightings, which leave "
                          "the category profile out: the same model without the profile is their reference. ")
    gates = [(r, o) for r in results for o in r.outcomes if o.gates]
    if gates:
        lines += ["", "## Expert utilisation of the mixture-of-experts designs (validation split)", "",
                  "Mean gate weight per expert (own experts first, then the shared ones for CGC/PLE); a gate whose "
                  "mean weight on one expert exceeds 0.9 has collapsed.", "",
                  "| design | seed | gate | mean weight per expert | collapsed |", "|---|---:|---|---|---|"]
        for r, o in gates:
            for gate, w in sorted(o.gates.items()):
                lines.append(f"| {r.row.label} | {o.seed} | {gate} | {' '.join(f'{x:.2f}' for x in w)} | "
                             f"{'**yes**' if gate in o.collapsed_gates else 'no'} |")
    gb = next((r for r in results if r.row.kind == "gbdt"), None)
    if gb is not None and gb.outcomes:
        imp = gb.outcomes[0].extra.get("importance", {})
        trees = gb.outcomes[0].extra.get("trees", {})
        lines += ["", "## GBDT: trees chosen on validation and strongest features (gain), seed "
                  f"{gb.outcomes[0].seed}", ""]
        for task, feats in imp.items():
            lines.append(f"* {task} ({trees.get(task)} trees): " + ", ".join(f"{n}" for n, _ in feats[:6]))
    return "\n".join(lines) + "\n"


VALIDATION_COLUMNS = ("ctr_auc", "ctcvr_auc", "l2r_auc", "follow_auc", "ppp_accuracy")


def paired_difference(ref: RowResult, row: RowResult, column: str) -> tuple[float, float, int]:
    """``row`` minus ``ref`` on the validation day's selected ``column``, over the seeds both ran: (mean,
    standard error of the mean (NaN for one seed), seeds)."""
    by_seed = {o.seed: o.valid.get(column, math.nan) for o in ref.outcomes}
    diffs = [o.valid.get(column, math.nan) - by_seed[o.seed] for o in row.outcomes if o.seed in by_seed]
    diffs = [d for d in diffs if not math.isnan(d)]
    if not diffs:
        return math.nan, math.nan, 0
    s = ev.summarize(diffs)
    return s.mean, (s.std / math.sqrt(s.n) if s.n > 1 else math.nan), s.n


def validation_table(ref: RowResult, rows: Sequence[RowResult]) -> list[str]:
    """The rows' selected validation metrics, and each row's paired difference from ``ref``: what the choice of
    a setting reads (the test day above is scored once, after it)."""
    lines = ["", "## The validation day: what selection and the choice of a setting read", "",
             "Each row's validation metrics at its selected scoring (mean ± std over its seeds) and, in brackets, "
             f"its paired difference from {ref.row.label.split(' (')[0]} over the seeds both ran (mean ± standard "
             "error; **bold** beyond two standard errors; one seed: the difference alone).", "",
             "| model | seeds | " + " | ".join(HEAD[c] for c in VALIDATION_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(VALIDATION_COLUMNS)]
    for r in rows:
        if not r.outcomes:
            continue
        cells = []
        for c in VALIDATION_COLUMNS:
            s = ev.summarize(o.valid.get(c, math.nan) for o in r.outcomes)
            text = f"{s.mean:.4f}" if s.n == 1 else _fmt(s)
            mean, se, n = paired_difference(ref, r, c) if r is not ref else (math.nan, math.nan, 0)
            if n == 1:
                text += f" ({mean:+.4f})"
            elif n > 1:
                diff = f"{mean:+.4f} ± {se:.4f}"
                text += f" (**{diff}**)" if abs(mean) > 2 * se else f" ({diff})"
            cells.append(text)
        lines.append(f"| {r.row.label} | {', '.join(str(o.seed) for o in r.outcomes)} | " + " | ".join(cells) + " |")
    return lines


def _targets(row: RowResult, name: str, oracle: Mapping[str, float]) -> list[str]:
    """``row``'s test scores against the issue's targets: the share of the oracle's lift over chance, PPP accuracy."""
    lines = ["", f"## {name} against the targets", "",
             f"| metric | {name} | oracle | share of the oracle's lift over chance | target |",
             "|---|---:|---:|---:|---|"]
    for c in ("ctr_auc", "l2r_auc", "follow_auc", "ctcvr_auc", "cvr_auc"):
        if c in oracle and row.summary[c].n:
            lines.append(f"| {HEAD[c]} | {_fmt(row.summary[c])} | {oracle[c]:.4f} | "
                         f"{lift_share(row.summary[c].mean, oracle[c]):.0%} | "
                         f"{'≥ 75%' if c in ('ctr_auc', 'l2r_auc', 'follow_auc') else '–'} |")
    if row.summary["ppp_accuracy"].n:
        lines.append(f"| {HEAD['ppp_accuracy']} | {_fmt(row.summary['ppp_accuracy'])} | "
                     f"{oracle.get('ppp_accuracy', math.nan):.4f} | | ≥ 0.85 |")
    return lines


def _against(ref: RowResult, rows: Sequence[RowResult], marked: Sequence[str], title: str,
             intro: str = "") -> list[str]:
    """A table of ``>`` / ``<`` / ``≈`` marks: ``ref`` against each of ``rows``, per column of ``marked``."""
    lines = ["", title, "", intro + "`>` better beyond noise, `<` worse beyond noise, `≈` within noise.", "",
             "| model | " + " | ".join(HEAD[c] for c in marked) + " |", "|---|" + "---|" * len(marked)]
    for r in rows:
        marks = [ev.compare(ref.summary[c], r.summary[c]) if ref.summary[c].n and r.summary[c].n else ""
                 for c in marked]
        lines.append(f"| {r.row.label} | " + " | ".join(marks) + " |")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--world", choices=WORLDS, default="demo",
                   help="demo: the synthetic world (with its oracle); taobao: the real Taobao log "
                        "(--config conf/taobao.yaml; docs/taobao.md), its supported rows by default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row (e.g. training.epochs=2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS],
                   help="a subset of the rows, run in this order")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="comparison", help="results file names (<name>.md, <name>.json)")
    p.add_argument("--fresh", action="store_true", help="ignore cached runs")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where finished runs are kept (default: the world's runs kept in git, "
                        "benchmarks/results/comparison_runs or taobao_runs)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--note", default="", help="a line printed under the table's header (how the runs were made)")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: write the table from the cached runs, marking rows and seeds not run")
    p.add_argument("--pair-with", choices=[r.key for r in ROWS], default=None,
                   help="the row the validation table's paired differences are taken from (default DUPN-all; "
                        f"{NOWD_REFERENCE} for the settings tried on the platform's model before the weight decay)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--pair-with`` a row that ``--rows`` leaves out is refused."""
    p = parser()
    args = p.parse_args(argv)
    if args.pair_with and args.rows and args.pair_with not in args.rows:
        p.error(f"--pair-with {args.pair_with}: not among --rows; add it to --rows or leave --pair-with out")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "alembic", "matplotlib", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.time()
    overrides = [*BUDGET, *args.overrides]
    cfg = load_config(args.config, overrides)
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    with exits_on_platform_error("bench_comparison"):  # a preparation job failed: one line naming it
        prepare(args.config, overrides, cfg, tables, args.world)
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    splits = meta["splits"]
    data = training_data(tables, splits["train"], cfg.training.tasks)
    stats = serving_statistics(tables, dt.date.fromisoformat(data.test_days[-1]), cfg.inputs.rank_features_dim)
    oracle: dict[str, float] = {}
    if args.world == "demo":
        from features.oracle import oracle_scores

        oracle = oracle_scores(tables, data.test_days, cfg.training_set)
    runner = Runner(args.config, cfg, tables, data, stats, args.fresh, overrides, args.cached_only,
                    args.cache_dir or RUNS[args.world])

    def run_seeds(row: Row) -> list[RunOutcome]:
        outcomes = []
        for s in args.seeds:
            try:
                outcomes.append(runner.run(row, s))
            except NotRun:
                logger.warning("%s seed %d: not in the cache (--cached-only)", row.key, s)
        return outcomes

    # rows run in the order given (so the most important finish first); the table keeps ROWS' order
    keys = args.rows or (TAOBAO_ROWS if args.world == "taobao" else [r.key for r in ROWS])
    rows = [next(r for r in ROWS if r.key == k) for k in dict.fromkeys(keys)]
    # rows whose resolved model and training equal a reference's (DUPN-all, or DUPN-all without the category
    # profile) are that reference itself
    references = [next(r for r in ROWS if r.key == k) for k in (REFERENCE, NOPROFILE_REFERENCE)]
    ref_cfgs = {r.key: runner.row_config(r).training for r in references}
    results: list[RowResult] = []
    done: dict[str, RowResult] = {}
    for row in rows:
        same = next((r for r in references if row.kind == "neural" and row.key != r.key
                     and runner.row_config(row).training == ref_cfgs[r.key]
                     and (r.key in done or not args.rows or r.key in args.rows)), None)
        if same is not None:
            if same.key not in done:
                done[same.key] = RowResult(same, run_seeds(same))
            results.append(RowResult(row, done[same.key].outcomes, same_as=same.label.split(" (")[0]))
            continue
        rr = RowResult(row, run_seeds(row))
        done[row.key] = rr
        results.append(rr)
        logger.info("%s: %s", row.key, {c: rr.summary[c].describe() for c in COLUMNS[:7]})
    results.sort(key=lambda r: ROWS.index(r.row))
    wall = (time.time() - started) / 60
    command = "python -m benchmarks.bench_comparison " + " ".join(argv if argv is not None else sys.argv[1:])
    tc = cfg.training
    context = {
        "command": command.strip(), "date": dt.date.today().isoformat(), "machine": machine(), "wall_minutes": wall,
        "train_minutes": sum(o.train_seconds for r in results if not r.same_as for o in r.outcomes) / 60,
        "cached_only": bool(args.cached_only),
        "seeds": args.seeds,
        "data": (f"features/training_examples v{data.version} of the demo world (seed {cfg.demo.seed}, "
                 f"{cfg.demo.n_users:,} users): {data.describe()}" if args.world == "demo" else
                 f"features/training_examples v{data.version} of the Taobao log (docs/taobao.md: next-day "
                 f"interaction lists; CTR = next-day interaction, CTCVR = next-day purchase, L2R = the lists' "
                 f"ranking): {data.describe()}"),
        "protocol": "train on the training days, select on the validation day, score the test day once; PPP on the "
                    f"held-out test users ({cfg.training_set.ppp_test_user_share:.0%} of users by hash).",
        "budget": f"every neural model trains until validation stops improving ({tc.early_stopping.evals_per_epoch} "
                  f"scorings per epoch, patience {tc.early_stopping.patience}) within {tc.epochs} epochs; the GBDT "
                  f"adds trees until validation stops improving (50 rounds patience, at most 1,500).",
        "note": args.note,
        "pair_with": args.pair_with or REFERENCE,
        "runs_made_at": sorted(runner.cache.commits),
        "data_fingerprint": runner.cache.fingerprint,
    }
    payload = {
        "context": context, "oracle": oracle,
        "rows": [{"key": r.row.key, "label": r.row.label, "group": r.row.group, "same_as": r.same_as,
                  "metrics": {c: r.summary[c].as_dict() for c in COLUMNS},
                  "train_seconds": r.seconds().as_dict(), "samples_per_second": r.rate().as_dict(),
                  "selected_epoch": r.epochs().as_dict(),
                  "missing_seeds": r.missing(args.seeds), "best_at_cap": r.at_cap(),
                  "runs": [o.as_dict() for o in r.outcomes]} for r in results],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(payload, indent=1, default=float))
    text = markdown(results, oracle, context)
    try:
        figures.save(figures.comparison_curves(payload), args.out_dir / f"{args.name}_curves.png")
        text += ("\n## Learning curves on the validation day\n\nEach validation scoring's metrics against the "
                 "epoch, the mean over the seeds, for the DUPN ablations and the neural baselines "
                 f"(`benchmarks/figures.py` draws it from `{args.name}.json`; the test day is scored once and "
                 f"never plotted).\n\n![learning curves on the validation day]({args.name}_curves.png)\n")
    except ValueError as exc:
        logger.info("no learning-curve figure: %s", exc)
    (args.out_dir / f"{args.name}.md").write_text(
        f"<!-- generated by: {context['command']} ({context['date']}, {machine()}); do not edit -->\n" + text)
    if not args.no_mlflow:
        log_to_mlflow(cfg, results, oracle, context, text)
    print(text)


def log_to_mlflow(cfg: Config, results: list[RowResult], oracle: dict[str, float], context: dict[str, Any],
                  text: str) -> None:
    """One parent run with the table, and a child run per row (per-seed test metrics at step = seed)."""
    import mlflow

    from registry.tracking import configure_mlflow

    experiment = configure_mlflow(cfg.mlflow)
    with mlflow.start_run(experiment_id=experiment, run_name=f"comparison-{context['date']}",
                          tags={"benchmark": "comparison"}):
        mlflow.log_params({"seeds": ",".join(str(s) for s in context["seeds"]), "command": context["command"][:500]})
        mlflow.log_metrics({f"oracle_{k}": v for k, v in oracle.items() if isinstance(v, float) and v == v})
        mlflow.log_text(text, "comparison.md")
        for r in results:
            if not r.outcomes:
                continue
            with mlflow.start_run(experiment_id=experiment, run_name=r.row.key, nested=True,
                                  tags={"group": r.row.group, "same_as": r.same_as}):
                mlflow.log_params({"label": r.row.label, "overrides": ",".join(r.row.overrides) or "-"})
                for o in r.outcomes:
                    mlflow.log_metrics({f"test_{k}": v for k, v in o.test.items() if v == v}, step=o.seed)
                mlflow.log_metrics({f"mean_test_{c}": s.mean for c, s in r.summary.items() if s.n})
                mlflow.log_metrics({f"std_test_{c}": s.std for c, s in r.summary.items() if s.n})
                mlflow.log_metrics({"mean_train_seconds": r.seconds().mean, "mean_samples_per_second": r.rate().mean})
                gates = {f"{o.seed}/{g}": w for o in r.outcomes for g, w in o.gates.items()}
                if gates:
                    mlflow.log_dict(gates, "expert_utilisation.json")


if __name__ == "__main__":
    main()
