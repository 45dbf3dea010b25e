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
* two probes that learn the Bayes classifier's own form from the labelled training users
  (:class:`ChoiceModel`: each behaviour picks a relative-price bin with probability softmax over the
  bins of the category's offer plus the tier's taste for the behaviour type), with and without a
  learned offer per category; bins chosen on the validation split's held-out users, the test split
  scored once. They show how much of the catalogue's term can be learned from the data. Two more fit the
  same form on the labels' cross-entropy (:meth:`ChoiceModel.fit_labels`), as a tier head of this form
  inside the model would be trained, with the L2 penalty also chosen on validation;
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
from dataclasses import dataclass
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


TierRow = tuple[Any, Any, Any, int, int]  # relative log prices, behaviour types, categories, label, label group


@dataclass
class TierRows:
    """The training set's tier rows (one per labelled user and day) of each split, as the user tower reads
    their prices: per row the relative log prices of the behaviours with a known price (log price minus the
    frozen category reference of the serving statistics), their behaviour types and categories, the label
    and the label group. Read once (:func:`tier_rows`) for every probe."""

    train: list[TierRow]
    valid: list[TierRow]
    test: list[TierRow]


def tier_rows(tables: Any, cfg: Any) -> TierRows | str:
    """The training set's :class:`TierRows`, or the reason there are none."""
    import datetime as dt

    import numpy as np
    import pyarrow.parquet as pq

    from core import tables as t
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

    def rows(files: Sequence[str]) -> list[TierRow]:
        out = []
        cols = ["seq_log_price", "seq_behavior", "seq_category", "label_tier", "ppp_user"]
        for f in files:  # tier rows only: one per labelled user and day
            part = pq.read_table(f, columns=cols, filters=[("kind", "=", "ppp")]).to_pydict()
            for price, beh, cat, label, group in zip(*(part[c] for c in cols)):
                price, beh, cat = np.asarray(price, float), np.asarray(beh), np.asarray(cat)
                known = price > 0
                out.append((price[known] - reference[cat[known]], beh[known], cat[known], int(label), int(group)))
        return out

    return TierRows(rows(data.train_files), rows(data.valid_files), rows(data.test_files))


def price_probe(loaded: TierRows | str) -> dict[str, float] | str:
    """Accuracy of a logistic regression on the tower's per-behaviour-type price statistics (see the
    module docstring): ``unseen`` / ``seen`` accuracy and label counts, or the reason it was not run."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core import protocol as pr
    from features.encoding import BEHAVIOR_INDEX

    if isinstance(loaded, str):
        return loaded
    types = [BEHAVIOR_INDEX[b] for b in ("click", "fav", "cart", "buy")]

    def features(rs: Sequence[TierRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = [[v for b in types for v in (rel[beh == b].sum(), (beh == b).sum())] for rel, beh, _, _, _ in rs]
        return np.asarray(x, float), np.asarray([r[3] for r in rs]), np.asarray([r[4] for r in rs])

    x_train, y_train, _ = features(loaded.train)
    x_test, y_test, g_test = features(loaded.test)
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_train)
    hit = model.predict(scaler.transform(x_test)) == y_test
    unseen, seen = g_test == pr.PPP_TEST_USER, g_test == pr.PPP_TRAIN_USER
    return {"unseen": float(hit[unseen].mean()), "seen": float(hit[seen].mean()),
            "unseen_labels": float(unseen.sum()), "seen_labels": float(seen.sum()), "train_rows": float(len(y_train))}


CHOICE_BINS = (8, 16, 32)  # the relative-price bins the choice probe chooses from on validation
# the choice probes: (fitted by the behaviours' likelihood, or on the labels as a tier head would be) x (with or
# without a learned offer per category)
CHOICE_NAMES = {"per_category": "with each category's offer learned", "no_catalogue": "without per-category terms",
                "labels_per_category": "with each category's offer learned, trained on the labels",
                "labels_no_catalogue": "without per-category terms, trained on the labels"}


@dataclass
class ChoiceModel:
    """A learned form of the Bayes classifier's likelihood: each behaviour of type ``b`` in category ``c``
    picks a relative-price bin with probability softmax over bins of ``catalogue[c] + taste[b, :, tier]``
    (the category's offer and the tier's taste for each price, fitted by maximum likelihood on labelled
    users); a user's tier is the label with the highest prior + summed log likelihood. ``catalogue`` is
    zero when fitted without per-category terms (every price equally on offer)."""

    edges: Any  # (bins - 1,) relative log price cuts
    log_prior: Any  # (tiers,)
    log_lik: Any  # (categories, behaviour types, bins, tiers)

    @staticmethod
    def _edges_and_types(rows: Sequence[TierRow], bins: int) -> tuple[Any, int, int]:
        """(quantile cuts of the training rows' relative log prices into ``bins``, tiers, behaviour types)."""
        import numpy as np

        rel = np.concatenate([r[0] for r in rows])
        edges = np.quantile(rel, np.linspace(0, 1, bins + 1)[1:-1])
        return edges, max(r[3] for r in rows) + 1, int(max(r[1].max(initial=0) for r in rows)) + 1

    @staticmethod
    def _log_lik(offer: Any, taste: Any) -> Any:
        """log softmax over the bins of ``offer[c] + taste[b, ., tier]``: (C or 1, types, bins, tiers)."""
        import torch

        logits = offer[:, None, :, None] + taste[None]
        return logits - torch.logsumexp(logits, dim=2, keepdim=True)

    @staticmethod
    def fit(rows: Sequence[TierRow], bins: int, categories: int, per_category: bool,
            max_iter: int = 300) -> "ChoiceModel":
        """Maximum likelihood of the behaviours' price bins given the users' labels (the generative fit)."""
        import numpy as np
        import torch

        edges, tiers, types = ChoiceModel._edges_and_types(rows, bins)
        counts = np.zeros((categories, types, bins, tiers))
        for r_rel, beh, cat, label, _ in rows:  # sufficient statistics: behaviours per (category, type, bin, tier)
            np.add.at(counts, (cat, beh, np.searchsorted(edges, r_rel), label), 1.0)
        n = torch.tensor(counts, dtype=torch.float64)
        catalogue = torch.zeros(categories if per_category else 1, bins, dtype=torch.float64, requires_grad=True)
        taste = torch.zeros(types, bins, tiers, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([catalogue, taste], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -(n * ChoiceModel._log_lik(catalogue, taste)).sum() / n.sum().clamp(min=1.0)
            loss.backward()
            return loss

        opt.step(closure)
        labels = np.bincount([r[3] for r in rows], minlength=tiers) + 1.0
        with torch.no_grad():
            table = ChoiceModel._log_lik(catalogue, taste).expand(categories, types, bins, tiers).numpy().copy()
        return ChoiceModel(edges, np.log(labels / labels.sum()), table)

    @staticmethod
    def fit_labels(rows: Sequence[TierRow], bins: int, categories: int, per_category: bool, l2: float,
                   max_iter: int = 300) -> "ChoiceModel":
        """The same form fitted as a tier head would be trained: the labels' cross-entropy of
        ``bias[tier] + sum over behaviours of log softmax(offer[c] + taste[b, ., tier])[bin]``, with an L2
        penalty ``l2`` on the offer and the taste (``bias`` takes the prior's place). The offer of the chosen
        bin is the same for every tier, so only the normaliser carries it: per row, counts of behaviours by
        (type, bin) and by (category, type) are all the fit needs."""
        import numpy as np
        import torch

        edges, tiers, types = ChoiceModel._edges_and_types(rows, bins)
        by_bin = np.zeros((len(rows), types, bins))
        at, weight = [], []
        for i, (r_rel, beh, cat, _, _) in enumerate(rows):
            np.add.at(by_bin, (i, beh, np.searchsorted(edges, r_rel)), 1.0)
            keys, n = np.unique(cat * types + beh, return_counts=True)
            at.append(np.stack([np.full(len(keys), i), keys]))
            weight.append(n)
        by_cat = torch.sparse_coo_tensor(torch.tensor(np.concatenate(at, axis=1)),
                                         torch.tensor(np.concatenate(weight), dtype=torch.float64),
                                         (len(rows), categories * types), check_invariants=True).coalesce()
        h = torch.tensor(by_bin)
        y = torch.tensor([r[3] for r in rows])
        offer = torch.zeros(categories if per_category else 1, bins, dtype=torch.float64, requires_grad=True)
        taste = torch.zeros(types, bins, tiers, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(tiers, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([offer, taste, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            norm = torch.logsumexp(offer[:, None, :, None] + taste[None], dim=2)  # (C or 1, types, tiers)
            norm = norm.expand(categories, types, tiers).reshape(categories * types, tiers)
            logits = torch.einsum("ntb,tbk->nk", h, taste) - torch.sparse.mm(by_cat, norm) + bias
            loss = torch.nn.functional.cross_entropy(logits, y) + l2 * (offer.square().sum() + taste.square().sum())
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            table = ChoiceModel._log_lik(offer, taste).expand(categories, types, bins, tiers)
            return ChoiceModel(edges, bias.numpy().copy(), table.numpy().copy())

    def predict(self, rows: Sequence[TierRow]) -> Any:
        import numpy as np

        out = np.empty(len(rows), dtype=int)
        for i, (rel, beh, cat, _, _) in enumerate(rows):
            out[i] = int(np.argmax(self.log_prior + self.log_lik[cat, beh, np.searchsorted(self.edges, rel)].sum(0)))
        return out


CHOICE_L2 = (1e-4, 1e-3, 1e-2)  # the L2 penalties the label-trained choice probe chooses from on validation


def choice_probe(loaded: TierRows | str, categories: int, per_category: bool,
                 on_labels: bool = False) -> dict[str, float] | str:
    """:class:`ChoiceModel` fitted on the training split's tier rows (by :meth:`ChoiceModel.fit`, or by
    :meth:`ChoiceModel.fit_labels` when ``on_labels``), its bins (and L2 penalty) chosen on the validation
    split's held-out users, the test split scored once: accuracies as :func:`price_probe` gives them, with the
    chosen ``bins`` (and ``l2``) and its ``valid`` accuracy (or the reason it was not run). ``categories``: the
    category hash space (``sequences.hash_buckets.category_id``)."""
    import numpy as np

    from core import protocol as pr

    if isinstance(loaded, str):
        return loaded
    train, valid, test = loaded.train, loaded.valid, loaded.test

    def accuracy(model: ChoiceModel, rs: Sequence[Any], group: Any) -> tuple[float, float]:
        hit = model.predict(rs) == np.asarray([r[3] for r in rs])
        keep = group(np.asarray([r[4] for r in rs]))
        return float(hit[keep].mean()) if keep.any() else float("nan"), float(keep.sum())

    held_out = lambda g: g != pr.PPP_TRAIN_USER  # noqa: E731  (the validation split's unseen users)
    grid = [(b, l2) for b in CHOICE_BINS for l2 in (CHOICE_L2 if on_labels else (0.0,))]
    fits = {(b, l2): ChoiceModel.fit_labels(train, b, categories, per_category, l2) if on_labels
            else ChoiceModel.fit(train, b, categories, per_category) for b, l2 in grid}
    scored = {key: accuracy(m, valid, held_out)[0] for key, m in fits.items()}
    chosen = max(grid, key=lambda key: (scored[key], -key[0], key[1]))  # ties: fewer bins, more penalty
    unseen, n_unseen = accuracy(fits[chosen], test, lambda g: g == pr.PPP_TEST_USER)
    seen, n_seen = accuracy(fits[chosen], test, lambda g: g == pr.PPP_TRAIN_USER)
    logger.info("choice probe (per category %s, on labels %s): validation by (bins, l2) %s, chose %s",
                per_category, on_labels, scored, chosen)
    out = {"unseen": unseen, "seen": seen, "unseen_labels": n_unseen, "seen_labels": n_seen,
           "train_rows": float(len(train)), "bins": float(chosen[0]), "valid": scored[chosen]}
    if on_labels:
        out["l2"] = chosen[1]
    return out


def _cell(result: Mapping[str, float]) -> str:
    lo, hi = wilson(result["ppp_accuracy"], result["labels"])
    return f"{result['ppp_accuracy']:.4f} [{lo:.4f}, {hi:.4f}]"


def markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]], oracle: Mapping[str, float],
             models: Sequence[Mapping[str, Any]], context: Mapping[str, Any],
             probe: Mapping[str, float] | str = "not run",
             choices: Mapping[str, Mapping[str, float] | str] | None = None) -> str:
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
    for key, result in (choices or {}).items():
        if isinstance(result, dict):
            u = {"ppp_accuracy": result["unseen"], "labels": result["unseen_labels"]}
            s = {"ppp_accuracy": result["seen"], "labels": result["seen_labels"]}
            how = f"trained on the labels' cross-entropy as a tier head would be, over {int(result['train_rows']):,} " \
                f"training rows; {int(result['bins'])} relative-price bins and an L2 penalty of {result['l2']:g}" \
                if "l2" in result else f"the Bayes classifier's form fitted on {int(result['train_rows']):,} " \
                f"training rows; {int(result['bins'])} relative-price bins"
            lines.append(f"| probe: choice model {CHOICE_NAMES[key]} ({how}, chosen on validation: "
                         f"{result['valid']:.4f}) | {_cell(u)} | {_cell(s)} | – | – |")
    lines.append(f"| oracle: the latent tier | {oracle['ppp_accuracy']:.4f} | {oracle['ppp_accuracy_seen']:.4f} | "
                 "1.0000 | – |")
    for m in models:
        u, s = m["unseen"], m["seen"]
        seen = f"{s['mean']:.4f} ± {s['std']:.4f}" if s and s.get("n") else "–"
        lines.append(f"| model: {m['label']} (comparison.json, {u['n']} seeds) | {u['mean']:.4f} ± {u['std']:.4f} | "
                     f"{seen} | – | – |")
    if isinstance(probe, str):
        lines += ["", f"Probe of the tower's price statistics: {probe}."]
    if choices:
        lines += ["", "The choice-model probes (`ChoiceModel` in the benchmark) learn the Bayes classifier's own form "
                  "from the labelled training users: a behaviour of type b in category c picks a bin of the "
                  "relative log price (the tower's input) with probability softmax(offer[c] + taste[b, ·, tier]); "
                  "a user's label is the one with the highest prior plus summed log likelihood. The bins (8, 16 or "
                  "32 quantile bins) are chosen on the validation day's held-out users, the test day is scored once. "
                  "With the offer per category they can learn which prices each category offers, the term the "
                  "Bayes classifier's catalogue gives it; without, every price is equally on offer. The rows "
                  "*trained on the labels* fit the same form by the labels' cross-entropy, as a tier head of this "
                  "form inside the model would be trained, with a free bias per tier and an L2 penalty (1e-4, "
                  "1e-3 or 1e-2, chosen on validation with the bins); the others by the behaviours' likelihood."]
        lines += [f"Choice probe {key}: {r}." for key, r in choices.items() if isinstance(r, str)]
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
    labelled = tier_rows(tables, cfg)  # read once for the three probes
    categories = cfg.sequences.hash_buckets.category_id
    probe = price_probe(labelled)
    choices = {key: choice_probe(labelled, categories, per_category=key.endswith("per_category"),
                                 on_labels=key.startswith("labels_")) for key in CHOICE_NAMES}
    scores = oracle.oracle_scores(tables, [day], cfg.training_set)
    orc = {"ppp_accuracy": scores["ppp_accuracy"], "ppp_accuracy_seen": scores["ppp_accuracy_seen"]}
    models = quoted_models(args.comparison)
    context = {"command": command, "machine": machine(), "day": day, "max_len": seq.max_len,
               "lookback_days": seq.lookback_days, "label_noise": cfg.demo.ppp_label_noise,
               "seconds": time.time() - started}
    text = markdown(results, orc, models, context, probe, choices)
    if args.out_dir:
        write_result(args.out_dir / f"{args.name}.md", command, text)
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(
            {"context": context, "bayes": results, "probe": probe, "choices": choices, "oracle": orc,
             "models": models}, indent=1) + "\n")
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
