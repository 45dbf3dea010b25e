"""Where the GBDT's lead on the item tasks is: CTR and CTCVR AUC by slice of the test day, for DUPN-all
and the GBDT, and for the GBDT with groups of its features left out.

    .venv/bin/python -m benchmarks.bench_slices --config conf/local.yaml [--set lake_root=<a demo lake>] [--seed 0]

The test day's impressions are cut two ways, and the cuts crossed:

* **search / recommend**: the impression's list has a query or not;
* **recent / not recent**: the user had a behaviour in the impression's item category within
  ``--recent-s`` seconds before it (a time-bucket edge, default 1,800 s). On DUPN's side this is read from
  the row's sequence (a behaviour of the target's category in a time bucket up to that edge), on the
  GBDT's from ``cat_last_age_h``; the benchmark stops if the two sides do not put the same number of rows
  in every slice.

Both models are trained as ``bench_comparison`` trains them (same budget, selection on the validation
day, the test day scored once), with one seed: DUPN-all as the config sets it (``--set`` changes it),
the GBDT without the user's history with the target item (``gbdt_noitem``, DUPN's heads have no exact-item
match either). The GBDT is then re-trained without each group of ``GROUPS``, which says which of its
features a slice's lead rests on. The oracle (the world's own probabilities) is scored on the
search / recommend slices. Writes ``<name>.md`` and ``<name>.json`` under ``--out-dir``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.common import DUPN_ALL, ROOT, machine, write_result

logger = logging.getLogger("bench_slices")

NOITEM = ("item_n_30d", "item_last_age_h")
# GBDT feature groups left out one at a time (on top of NOITEM)
GROUPS: dict[str, tuple[str, ...]] = {
    "purchases in the target's category (cat_buy_7d, cat_buy_30d, cat_last_buy_age_h)":
        ("cat_buy_7d", "cat_buy_30d", "cat_last_buy_age_h"),
    "the other behaviour types too (also cat_fav_7d, cat_cart_7d)":
        ("cat_buy_7d", "cat_buy_30d", "cat_last_buy_age_h", "cat_fav_7d", "cat_cart_7d"),
    "fine recency of the target's category (cat_n_1h, cat_share_1h, cat_last_age_h, cat_recency_rank)":
        ("cat_n_1h", "cat_share_1h", "cat_last_age_h", "cat_recency_rank"),
}
SLICES = ("all", "search", "recommend", "recent", "not recent", "search & recent", "search & not recent",
          "recommend & recent", "recommend & not recent")


def slice_masks(search: np.ndarray, recent: np.ndarray) -> dict[str, np.ndarray]:
    """Each slice of ``SLICES`` as a boolean mask over the impressions."""
    search, recent = np.asarray(search, bool), np.asarray(recent, bool)
    parts = {"search": search, "recommend": ~search, "recent": recent, "not recent": ~recent}
    out = {"all": np.ones_like(search)}
    for name in SLICES[1:]:
        out[name] = np.logical_and.reduce([parts[p] for p in name.split(" & ")])
    return out


def recent_bucket(edges: Sequence[int], seconds: int) -> int:
    """The last time bucket whose behaviours are at most ``seconds`` old (bucket i + 1 holds ages up to
    ``edges[i]``, :func:`features.encoding.time_bucket`); ``seconds`` must be one of the edges."""
    if seconds not in edges:
        raise SystemExit(f"bench_slices: --recent-s {seconds} is not a time-bucket edge of "
                         f"sequences.time_bucket_edges_s ({list(edges)}); choose one of them")
    return list(edges).index(seconds) + 1


def batch_slices(batch: Mapping[str, Any], last_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """(search, recent) of every impression slot of a training-set batch, in the order in which
    :func:`training.evaluation.batch_predictions` lists the CTR predictions."""
    from training.losses import slot_mask
    from training.modules import valid_mask

    slots = slot_mask(batch)
    search = (batch["query_tokens"] > 0).any(dim=1).unsqueeze(1).expand_as(slots)
    valid = valid_mask(batch["seq_len"], batch["seq_category"].shape[1])
    near = valid & (batch["seq_time_bucket"] >= 1) & (batch["seq_time_bucket"] <= last_bucket)
    same = batch["seq_category"].unsqueeze(1) == batch["item_category"].unsqueeze(2)  # (B, G, L)
    recent = (same & near.unsqueeze(1)).any(dim=2)
    return search[slots].numpy(), recent[slots].numpy()


def gbdt_slices(data: Mapping[str, np.ndarray], rows: np.ndarray, seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """(search, recent) of the GBDT examples' impression ``rows``."""
    search = np.asarray(data["has_query"], dtype=float)[rows] > 0.5
    age_h = np.asarray(data["cat_last_age_h"], dtype=float)[rows]
    return search, np.nan_to_num(age_h, nan=np.inf) <= seconds / 3600.0


def slice_metrics(masks: Mapping[str, np.ndarray], ctr: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """CTR and CTCVR AUC, rows and click rate of each slice of CTR predictions (``training.evaluation``'s)."""
    from training.evaluation import auc

    out = {}
    for name, m in masks.items():
        click, buy = np.asarray(ctr["click"])[m], np.asarray(ctr["buy"])[m]
        out[name] = {"rows": float(m.sum()), "click_rate": float(click.mean()) if m.any() else float("nan"),
                     "ctr_auc": auc(click, np.asarray(ctr["prob"])[m]),
                     "ctcvr_auc": auc(buy, np.asarray(ctr["ctcvr_prob"])[m]) if "ctcvr_prob" in ctr else float("nan")}
    return out


def _f(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.4f}"


def markdown(result: Mapping[str, Any]) -> str:
    ctx = result["context"]
    dupn, gbdt, oracle = result["dupn"], result["gbdt"], result["oracle"]
    lines = [
        "# The item tasks by slice: where the GBDT's lead is",
        "",
        f"Command: `{ctx['command']}`  ",
        f"Machine: {ctx['machine']}; {ctx['seconds']:.0f} s.  ",
        f"Data: {ctx['data']}; test day {ctx['test_day']}; seed {ctx['seed']}; *recent* = a behaviour in the "
        f"impression's item category within {ctx['recent_s']:,} s before it.",
        "",
        "| slice | impressions | click rate | CTR AUC: DUPN-all | GBDT | oracle "
        "| CTCVR AUC: DUPN-all | GBDT | oracle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SLICES:
        d, g, o = dupn[name], gbdt[name], oracle.get(name, {})
        lines.append(f"| {name} | {int(d['rows']):,} | {d['click_rate']:.4f} | {_f(d['ctr_auc'])} | "
                     f"{_f(g['ctr_auc'])} | {_f(o.get('ctr_auc'))} | {_f(d['ctcvr_auc'])} | {_f(g['ctcvr_auc'])} | "
                     f"{_f(o.get('ctcvr_auc'))} |")
    lines += ["", "## The GBDT without a group of its features", "",
              "The change of each AUC from the GBDT above when the group is left out (same seed, same rows).", "",
              "| left out | " + " | ".join(f"CTR: {s}" for s in SLICES) + " | CTCVR: all | CTCVR: recent |",
              "|---|" + "---:|" * (len(SLICES) + 2)]
    for label, res in result["gbdt_without"].items():
        cells = [f"{res[s]['ctr_auc'] - gbdt[s]['ctr_auc']:+.4f}" for s in SLICES]
        cells += [f"{res[s]['ctcvr_auc'] - gbdt[s]['ctcvr_auc']:+.4f}" for s in ("all", "recent")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "One seed per model: a difference of a few thousandths on a slice is within the seeds' noise "
              "(bench_comparison's standard deviations over 3 seeds are 0.001–0.004 on the whole day)."]
    return "\n".join(lines)


def oracle_slices(tables: Any, day: str) -> dict[str, dict[str, float]]:
    """The oracle's CTR and CTCVR AUC on the search and recommend impressions of ``day``."""
    from pyspark.sql import functions as F

    from features.oracle import rank_auc, truth_with_lists

    joined = truth_with_lists(tables, [day]).withColumn("p_buy", F.col("p_click") * F.col("p_buy_given_click"))
    out = {}
    for name, cond in (("all", F.lit(True)), ("search", F.col("scene") == "search"),
                       ("recommend", F.col("scene") != "search")):
        part = joined.where(cond)
        out[name] = {"ctr_auc": rank_auc(part, "p_click", "clicked"), "ctcvr_auc": rank_auc(part, "p_buy", "bought")}
    return out


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from benchmarks.bench_comparison import BUDGET, data_fingerprint, prepare
    from core import tables as t
    from core.config import load_config
    from core.delta import get_tables
    from core.spark import get_spark
    from features.gbdt import feature_columns, gbdt_spec, task_features
    from training import evaluation as ev
    from training.datasets import serving_statistics, training_data
    from training.gbdt import GBDTParams, load_split, run_gbdt, task_rows
    from training.spec import ModelSpec
    from training.experiment import train_selected
    from training.trainer import eval_source

    started = time.time()
    overrides = [*DUPN_ALL, *BUDGET, *args.overrides]  # DUPN-all, as the slices were measured
    cfg = load_config(args.config, overrides)
    tables = get_tables(get_spark(cfg), cfg)
    prepare(args.config, overrides, cfg, tables)
    data = training_data(tables, tables.last_metadata(t.TRAINING_EXAMPLES)["splits"]["train"], cfg.training.tasks)
    test_day = data.test_days[-1]
    last_bucket = recent_bucket(cfg.sequences.time_bucket_edges_s, args.recent_s)

    # the GBDT, and the GBDT without each group
    rank_dim = cfg.inputs.rank_features_dim
    gspec = gbdt_spec(rank_dim)
    version = tables.version(gspec)
    cols = sorted(feature_columns(rank_dim))
    splits = [load_split(tables.files(gspec, list(days), version), cols)
              for days in (data.train_days, data.valid_days, data.test_days)]
    rows = task_rows(splits[2], "ctr", training=False)
    g_masks = slice_masks(*gbdt_slices(splits[2], rows, args.recent_s))

    def gbdt(excluded: Sequence[str]) -> dict[str, dict[str, float]]:
        features = {task: [f for f in task_features(task, rank_dim) if f not in (*NOITEM, *excluded)]
                    for task in ("ctr", "cvr", "l2r", "follow", "ppp")}
        res = run_gbdt(*splits, features, ("ctr",), GBDTParams(), args.seed)
        return slice_metrics(g_masks, res.test.ctr)

    gbdt_all = gbdt(())
    without = {label: gbdt(group) for label, group in GROUPS.items()}

    # DUPN-all
    stats = serving_statistics(tables, dt.date.fromisoformat(test_day), rank_dim)
    spec = ModelSpec.from_config(cfg, tasks=[x for x in cfg.training.tasks if x in data.tasks],
                                 logit_offsets=data.logit_offsets,
                                 **stats.model_inputs(cfg.training.model.price_reference))
    training = cfg.training.model_copy(update={"seed": args.seed})
    result = train_selected(spec, training, data)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    pred = ev.predict(result.model(), eval_source(training, data.test_files, spec.tasks).batches(),
                      on_batch=lambda out, batch: parts.append(batch_slices(batch, last_bucket)))
    d_masks = slice_masks(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    mismatch = {k: (int(d_masks[k].sum()), int(g_masks[k].sum())) for k in SLICES
                if d_masks[k].sum() != g_masks[k].sum()}
    if mismatch:
        raise SystemExit(f"bench_slices: DUPN's and the GBDT's test rows fall in different slices "
                         f"(rows DUPN / GBDT: {mismatch}); rebuild features/gbdt_examples from the current "
                         f"training set (jobs/build_gbdt_features.py)")
    out = {"context": {"command": command, "machine": machine(), "date": dt.date.today().isoformat(),
                       "seconds": time.time() - started, "seed": args.seed, "recent_s": args.recent_s,
                       "test_day": test_day, "data": data_fingerprint(data)},
           "dupn": slice_metrics(d_masks, pred.ctr), "gbdt": gbdt_all, "gbdt_without": without,
           "oracle": oracle_slices(tables, test_day)}
    if args.out_dir:
        write_result(args.out_dir / f"{args.name}.md", command, markdown(out))
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (e.g. lake_root=/path/to/lake)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recent-s", type=int, default=1800, help="'recent': a behaviour in the target's category "
                   "within this many seconds (a time-bucket edge)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="slices", help="results file names (<name>.md, <name>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = "python -m benchmarks.bench_slices " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(run(args, command.strip())))


if __name__ == "__main__":
    main()
