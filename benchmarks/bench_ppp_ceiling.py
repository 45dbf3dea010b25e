"""How much of the purchasing-power tier can a user's behaviour reveal? The Bayes classifier that knows
the demo world's price model, against the oracle and the models.

    .venv/bin/python -m benchmarks.bench_ppp_ceiling --config conf/local.yaml [--date D]

The oracle's PPP accuracy predicts the latent tier itself; models see behaviour. This benchmark
scores :mod:`features.ppp_ceiling`'s classifier (the exact posterior of the tier given the prices of
the user's behaviours and the profile, with the generator's own price model and every item's true
price level) on the labels of day D (default: the last day of ``raw/ppp_labels``, the test day of the
demo training set), with the evaluation protocol's user groups: the held-out test users (how models
are scored) and the training users (``seen``). Rows:

* the model's view: the latest ``sequences.max_len`` behaviours of the look-back, and the profile;
* the same without the profile (behaviour only);
* the whole look-back (no length cap) and the profile: what a longer sequence would add;
* the model's view without the catalogue: every price level equally available in every category (a
  Gaussian around the tier over the levels), i.e. what prices say without knowing which levels each
  category offers;
* a probe of the models' own price inputs: a multinomial logistic regression (scikit-learn, fixed
  settings, no tuning) on each behaviour type's sum of relative prices and count, computed from the
  training set's tier rows exactly as the user tower computes them (log price minus the frozen
  category mean of the serving statistics), trained on the training split and scored on the test
  split's rows (needs ``features/training_examples``; left out with a note when absent);
* the oracle (the latent tier; label noise is what it misses);
* the platform's models, quoted from ``comparison.json`` (``--comparison``) when present.

Each accuracy has its 95% interval (Wilson score interval over the labels). Writes ``<name>.md`` and
``<name>.json`` under ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.common import ROOT, machine, write_result
from core.errors import PlatformError

logger = logging.getLogger("bench_ppp_ceiling")
UNCAPPED = 1_000_000


def wilson(p: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` over ``n`` trials."""
    if n <= 0 or math.isnan(p):
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def quoted_models(path: Path) -> list[dict[str, Any]]:
    """PPP accuracies of the comparison benchmark's rows (mean ± std over seeds), if it has run."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    out = []
    for row in data.get("rows", []):
        if row.get("same_as"):
            continue
        unseen, seen = row["metrics"].get("ppp_accuracy"), row["metrics"].get("ppp_accuracy_seen")
        if unseen and unseen.get("n"):
            out.append({"label": row["label"], "unseen": unseen, "seen": seen})
    return out


def price_probe(tables: Any, cfg: Any) -> dict[str, float] | str:
    """Accuracy of a logistic regression on the tower's per-behaviour-type price statistics (see the
    module docstring): ``unseen`` / ``seen`` accuracy and label counts, or the reason it was not run."""
    import datetime as dt

    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core import protocol as pr
    from core import tables as t
    from features.encoding import BEHAVIOR_INDEX
    from training.datasets import serving_statistics, training_data

    if not tables.exists(t.TRAINING_EXAMPLES):
        return "not run: no features/training_examples (run jobs/build_training_set.py)"
    splits = tables.last_metadata(t.TRAINING_EXAMPLES).get("splits")
    if not splits:
        return "not run: the training set's commit records no splits"
    data = training_data(tables, splits["train"], ["ppp"])
    stats = serving_statistics(tables, dt.date.fromisoformat(data.test_days[-1]), cfg.inputs.rank_features_dim)
    reference = np.zeros(cfg.sequences.hash_buckets.category_id)
    for index, value in stats.model_inputs(cfg.training.model.price_reference)["category_log_price"].items():
        reference[index] = value
    types = [BEHAVIOR_INDEX[b] for b in ("click", "fav", "cart", "buy")]

    def rows(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feats, labels, groups = [], [], []
        cols = ["seq_log_price", "seq_behavior", "seq_category", "label_tier", "ppp_user"]
        for f in files:  # tier rows only: one per labelled user and day
            part = pq.read_table(f, columns=cols, filters=[("kind", "=", "ppp")]).to_pydict()
            for price, beh, cat, label, group in zip(*(part[c] for c in cols)):
                price, beh, cat = np.asarray(price, float), np.asarray(beh), np.asarray(cat)
                rel = np.where(price > 0, price - reference[cat], 0.0)
                known = price > 0
                feats.append([x for b in types for x in (rel[(beh == b) & known].sum(), ((beh == b) & known).sum())])
                labels.append(label)
                groups.append(group)
        return np.asarray(feats, float), np.asarray(labels), np.asarray(groups)

    x_train, y_train, _ = rows(data.train_files)
    x_test, y_test, g_test = rows(data.test_files)
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_train)
    hit = model.predict(scaler.transform(x_test)) == y_test
    unseen, seen = g_test == pr.PPP_TEST_USER, g_test == pr.PPP_TRAIN_USER
    return {"unseen": float(hit[unseen].mean()), "seen": float(hit[seen].mean()),
            "unseen_labels": float(unseen.sum()), "seen_labels": float(seen.sum()), "train_rows": float(len(y_train))}


def _cell(result: Mapping[str, float]) -> str:
    lo, hi = wilson(result["ppp_accuracy"], result["labels"])
    return f"{result['ppp_accuracy']:.4f} [{lo:.4f}, {hi:.4f}]"


def markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]], oracle: Mapping[str, float],
             models: Sequence[Mapping[str, Any]], context: Mapping[str, Any],
             probe: Mapping[str, float] | str = "not run") -> str:
    lines = [
        "# Purchasing power: what behaviour can reveal",
        "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}; {context['seconds']:.0f} s.  ",
        f"Labels of {context['day']} (`raw/ppp_labels`), the protocol's user groups: *unseen* = the held-out "
        f"test users ({int(results['model_view']['unseen']['labels'])} labels; how models are scored), *seen* = "
        f"the training users ({int(results['model_view']['seen']['labels'])} labels). Look-back "
        f"{context['lookback_days']} days, sequences of at most {context['max_len']} behaviours.",
        "",
        "The Bayes classifier (`features/ppp_ceiling.py`) knows the world's price model exactly and every item's "
        "true price level, and predicts the most probable *label* (the tier, or a neighbour with probability "
        f"{context['label_noise']}). Accuracy against the labels, with its 95% Wilson interval; `tier accuracy` is "
        "against the latent tier.",
        "",
        "| predictor | PPP acc. (unseen users) | PPP acc. (seen users) | tier accuracy (unseen) "
        "| behaviours per label |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"model_view": f"Bayes: latest {context['max_len']} behaviours + profile (the models' inputs)",
             "behaviour_only": f"Bayes: latest {context['max_len']} behaviours, no profile",
             "whole_lookback": "Bayes: every behaviour of the look-back + profile",
             "no_catalogue": f"Bayes: latest {context['max_len']} behaviours + profile, without the catalogue "
                             "(every level equally available)"}
    for key, label in names.items():
        r = results[key]
        lines.append(f"| {label} | {_cell(r['unseen'])} | {_cell(r['seen'])} | {r['unseen']['tier_accuracy']:.4f} | "
                     f"{r['unseen']['mean_events']:.1f} |")
    if isinstance(probe, dict):
        u = {"ppp_accuracy": probe["unseen"], "labels": probe["unseen_labels"]}
        s = {"ppp_accuracy": probe["seen"], "labels": probe["seen_labels"]}
        lines.append(f"| probe: logistic regression on the tower's price statistics (sum of relative prices and "
                     f"count per behaviour type; {int(probe['train_rows']):,} training rows) | {_cell(u)} | {_cell(s)} "
                     "| – | – |")
    lines.append(f"| oracle: the latent tier | {oracle['ppp_accuracy']:.4f} | {oracle['ppp_accuracy_seen']:.4f} | "
                 "1.0000 | – |")
    for m in models:
        u, s = m["unseen"], m["seen"]
        seen = f"{s['mean']:.4f} ± {s['std']:.4f}" if s and s.get("n") else "–"
        lines.append(f"| model: {m['label']} (comparison.json, {u['n']} seeds) | {u['mean']:.4f} ± {u['std']:.4f} | "
                     f"{seen} | – | – |")
    if isinstance(probe, str):
        lines += ["", f"Probe of the tower's price statistics: {probe}."]
    lines += ["", "Models are quoted from `benchmarks/results/comparison.json` (mean ± std over seeds, same day, same "
              "users); rerun `python -m benchmarks.bench_comparison` to refresh them."]
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> str:
    from core import protocol as pr
    from core import tables as t
    from core.config import load_config
    from core.delta import get_tables
    from core.spark import get_spark
    from features import oracle
    from features.ppp_ceiling import ceiling_scores
    from pyspark.sql import functions as F

    started = time.time()
    cfg = load_config(args.config, args.overrides)
    spark = get_spark(cfg)
    tables = get_tables(spark, cfg)
    if not tables.exists(t.PPP_LABELS) or not tables.exists(t.TRUTH_USERS):
        raise PlatformError(f"no demo world under {cfg.lake_root}: run `python -m jobs.generate_demo_world` first")
    day = args.date.isoformat() if args.date else max(tables.partitions(t.PPP_LABELS))
    users = tables.read(t.PPP_LABELS, dt=day).select("user_id").distinct() \
        .withColumn("_g", pr.ppp_user_column(F.col("user_id"), cfg.training_set))
    groups = {"unseen": users.where(F.col("_g") == pr.PPP_TEST_USER),
              "seen": users.where(F.col("_g") == pr.PPP_TRAIN_USER)}
    seq = cfg.sequences
    results = {
        "model_view": ceiling_scores(spark, tables, cfg.demo, [day], seq.max_len, seq.lookback_days, groups),
        "behaviour_only": ceiling_scores(spark, tables, cfg.demo, [day], seq.max_len, seq.lookback_days, groups,
                                         use_profile=False),
        "whole_lookback": ceiling_scores(spark, tables, cfg.demo, [day], UNCAPPED, seq.lookback_days, groups),
        "no_catalogue": ceiling_scores(spark, tables, cfg.demo, [day], seq.max_len, seq.lookback_days, groups,
                                       catalogue=False),
    }
    probe = price_probe(tables, cfg)
    scores = oracle.oracle_scores(tables, [day], cfg.training_set)
    orc = {"ppp_accuracy": scores["ppp_accuracy"], "ppp_accuracy_seen": scores["ppp_accuracy_seen"]}
    models = quoted_models(args.comparison)
    context = {"command": command, "machine": machine(), "day": day, "max_len": seq.max_len,
               "lookback_days": seq.lookback_days, "label_noise": cfg.demo.ppp_label_noise,
               "seconds": time.time() - started}
    text = markdown(results, orc, models, context, probe)
    if args.out_dir:
        write_result(args.out_dir / f"{args.name}.md", command, text)
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(
            {"context": context, "bayes": results, "probe": probe, "oracle": orc, "models": models}, indent=1) + "\n")
    return text


def parser() -> argparse.ArgumentParser:
    from core.cli import parse_date

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml", help="config file (default conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (e.g. lake_root=/path/to/lake)")
    p.add_argument("--date", type=parse_date, help="label day (default: the last day of raw/ppp_labels)")
    p.add_argument("--comparison", type=Path, default=ROOT / "benchmarks" / "results" / "comparison.json",
                   help="comparison results to quote the models' PPP accuracy from")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="ppp_ceiling", help="results file names (<name>.md, <name>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    command = "python -m benchmarks.bench_ppp_ceiling " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        text = run(args, command.strip())
    except PlatformError as exc:
        raise SystemExit(f"bench_ppp_ceiling: {exc}") from None
    print(text)


if __name__ == "__main__":
    main()
