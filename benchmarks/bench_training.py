"""Training throughput of the same DUPN model on the demo training set, side by side in one run:

* **one row per example** (the layout before this work): every CTR, L2R, follow and PPP example is
  its own row carrying its user's whole sequence, rows are shuffled one by one, batches are padded
  to their longest sequence;
* **example groups**: one row per user and instant with all its examples (the impression list's
  items, their L2R list), the sequence encoded once per row, batches of whole groups;
* **example groups, bucketed by length**: the same, with the shuffling buffer sorted by sequence
  length into batches (the trainer's default);
* the grouped, bucketed batches fed through **Petastorm** instead of from memory (the real reader),
  with ``training.reader_workers`` threads and with one (``training.deterministic``: the same read
  order on every run, at the cost this row measures).

Every setting trains a fresh copy of the same initial weights for the same wall-clock budget and
counts training examples (an impression in an L2R list counts for CTR and for L2R, as it was two
rows before). Before timing, the benchmark checks that the grouped and the one-row-per-example
layouts give identical outputs on a fixed batch (same weights, eval mode).

    .venv/bin/python -m benchmarks.bench_training --config conf/local.yaml --rows 6000 --seconds 90 \\
        --out benchmarks/results/training.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from benchmarks.common import DUPN_ALL, machine_line, write_result
from core import tables as t
from core.config import TrainingConfig, load_config
from core.delta import get_tables
from core.spark import get_spark
from training.data import SLOT_FIELDS, TRAIN_FIELDS, Batch, PetastormSource, TensorBatches
from training.datasets import serving_statistics, training_data
from training.losses import row_counts
from training.model import build_model, last_shared_layer
from training.spec import ModelSpec
from training.step import TrainTask, prepare_torch
from training.weighting import build_weighting

logger = logging.getLogger("bench_training")
# one value per slot (item_tags and rank_features hold several, handled apart)
SLOT_KEYS = tuple(k for k in SLOT_FIELDS if k not in ("item_tags", "rank_features"))


def explode(batch: Mapping[str, Tensor], max_tags: int, rank_dim: int) -> dict[str, Tensor]:
    """Group rows -> one row per example (the old layout): each impression of a row becomes a CTR row and,
    in an L2R list, an L2R row, each with a copy of the user's sequence; follow and PPP rows stay."""
    g = batch["label_click"].shape[1]
    n_items = batch["n_items"]
    parent, slot, is_l2r = [], [], []
    for i in range(len(n_items)):
        k = int(n_items[i])
        if k == 0:
            parent.append(i), slot.append(-1), is_l2r.append(0)
            continue
        for j in range(k):
            parent.append(i), slot.append(j), is_l2r.append(0)
            if int(batch["l2r"][i]) == 1:
                parent.append(i), slot.append(j), is_l2r.append(1)
    p = torch.tensor(parent)
    s = torch.tensor(slot)
    l2r_row = torch.tensor(is_l2r)
    has = s >= 0
    safe = s.clamp(min=0)
    out: dict[str, Tensor] = {}
    for key, value in batch.items():
        if key in SLOT_KEYS:
            picked = value[p, safe] * has.to(value.dtype)
            out[key] = picked.unsqueeze(1)
        elif key in ("item_tags", "rank_features"):
            width = max_tags if key == "item_tags" else rank_dim
            v = value[p].reshape(len(p), g, width)[torch.arange(len(p)), safe] * has.unsqueeze(1).to(value.dtype)
            out[key] = v.reshape(len(p), width)
        else:
            out[key] = value[p]
    out["n_items"] = has.long()
    # a CTR row trains CTR only, an L2R row L2R only (as separate rows did)
    out["ctr_weight"] = out["ctr_weight"] * (l2r_row == 0).unsqueeze(1).to(out["ctr_weight"].dtype)
    out["l2r"] = out["l2r"] * l2r_row
    return out


def examples(batch: Mapping[str, Tensor], loss_names: Iterable[str]) -> int:
    return sum(row_counts(batch, [n for n in loss_names if n != "ctcvr"]).values())


def timed_training(spec: ModelSpec, state: dict[str, Tensor], training: TrainingConfig,
                   batches: Iterator[Batch], seconds: float, warmup: int = 3) -> dict[str, float]:
    """Train from ``state`` on ``batches`` for ``seconds`` (after ``warmup`` steps); examples/s and rows/s."""
    model = build_model(spec)
    model.load_state_dict(state)
    task = TrainTask(model, build_weighting(training.weighting, spec.loss_names, last_shared_layer(model)), training)
    n_ex = n_rows = steps = 0
    started = None
    for batch in batches:
        if steps == warmup:
            started = time.perf_counter()
            n_ex = n_rows = 0
        task.step(batch)
        steps += 1
        n_ex += examples(batch, spec.loss_names)
        n_rows += len(batch["seq_len"])
        if started is not None and time.perf_counter() - started >= seconds:
            break
    wall = time.perf_counter() - started if started is not None else float("nan")
    return {"examples_per_s": n_ex / wall, "rows_per_s": n_rows / wall, "steps": float(steps - warmup),
            "seconds": wall}


def cycle(source: TensorBatches) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from source.batches(epoch)
        epoch += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--rows", type=int, default=6000, help="example groups read into memory")
    p.add_argument("--seconds", type=float, default=90.0, help="training time per setting")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = load_config(args.config, [*DUPN_ALL, *args.overrides])  # DUPN-all, as training.md was measured
    tables = get_tables(get_spark(cfg), cfg)
    meta = tables.last_metadata(t.TRAINING_EXAMPLES)
    data = training_data(tables, meta["splits"]["train"], cfg.training.tasks)
    stats = serving_statistics(tables, dt.date.fromisoformat(data.test_days[-1]), cfg.inputs.rank_features_dim)
    spec = ModelSpec.from_config(cfg, tasks=data.tasks, logit_offsets=data.logit_offsets,
                                 **stats.model_inputs(cfg.training.model.price_reference))
    tc = cfg.training
    prepare_torch(tc.torch_threads or torch.get_num_threads())  # as the trainer does
    # one sample of the training split, held in memory (the same rows for every in-memory setting)
    src = PetastormSource(data.train_files, TRAIN_FIELDS, batch_size=args.rows, shuffle=True,
                          shuffle_capacity=args.rows, bucket_by_length=False, workers=tc.reader_workers, seed=1)
    sample = next(iter(src.batches()))
    grouped = TensorBatches(sample, tc.batch_size, shuffle=True, seed=2, bucket_by_length=False)
    bucketed = TensorBatches(sample, tc.batch_size, shuffle=True, seed=2, bucket_by_length=True)
    flat = explode(sample, spec.max_tags, spec.rank_dim)
    per_example = TensorBatches(flat, tc.batch_size, shuffle=True, seed=2, bucket_by_length=False)
    # identical outputs on a fixed batch
    torch.manual_seed(tc.seed)
    model = build_model(spec).eval()
    fixed = {k: v[:64] for k, v in sample.items()}
    with torch.no_grad():
        a, b = model(fixed), model(explode(fixed, spec.max_tags, spec.rank_dim))
    diffs = {}
    flat_fixed = explode(fixed, spec.max_tags, spec.rank_dim)
    for key in ("ctr_logit", "cvr_logit", "l2r_score"):
        if key in a:
            g = a[key][torch.arange(64).unsqueeze(1), torch.arange(a[key].shape[1]).unsqueeze(0)]
            mask = torch.arange(g.shape[1]).unsqueeze(0) < fixed["n_items"].unsqueeze(1)
            if key == "l2r_score":  # only the lists that are L2R examples have one-row-per-example twins
                mask = mask & (fixed["l2r"] == 1).unsqueeze(1)
            keep = (flat_fixed["n_items"] > 0) & ((flat_fixed["l2r"] == 0) if key != "l2r_score"
                                                  else (flat_fixed["l2r"] == 1))
            diffs[key] = float((g[mask] - b[key][keep, 0]).abs().max()) if key != "l2r_score" or keep.any() else 0.0
    for key in ("follow_logit", "ppp_logits"):
        if key in a:
            rows = flat_fixed["n_items"] == 0
            diffs[key] = float((a[key][fixed["n_items"] == 0] - b[key][rows]).abs().max())
    identical = all(v < 1e-4 for v in diffs.values())
    logger.info("grouped vs one row per example on a fixed batch: max |Δ| %s", diffs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, batches in (("one row per example", cycle(per_example)), ("example groups", cycle(grouped)),
                          ("example groups, bucketed", cycle(bucketed))):
        results[name] = timed_training(spec, state, tc, batches, args.seconds)
        logger.info("%s: %s", name, results[name])

    def petastorm_batches(workers: int) -> Iterator[Batch]:
        epoch = 0
        source = PetastormSource(data.train_files, TRAIN_FIELDS, batch_size=tc.batch_size, shuffle=True,
                                 shuffle_capacity=tc.shuffle_buffer, bucket_by_length=True, workers=workers, seed=3)
        while True:
            yield from source.batches(epoch)
            epoch += 1

    petastorm = "example groups, bucketed, Petastorm"
    results[f"{petastorm} ({tc.reader_workers} reader threads)"] = timed_training(
        spec, state, tc, petastorm_batches(tc.reader_workers), args.seconds)
    results[f"{petastorm}, training.deterministic (1 reader thread)"] = timed_training(
        spec, state, tc, petastorm_batches(1), args.seconds)
    base = results["one row per example"]["examples_per_s"]
    lines = ["| layout and feeding | examples/s | sequences/s | steps | speed-up (examples/s) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['examples_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r['steps']:.0f} | "
                     f"{r['examples_per_s'] / base:.2f}× |")
    table = "\n".join(lines)
    ident = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    body = (f"## Training throughput, same model and weights\n\n{machine_line()}\n\n{table}\n\n"
            f"Identical outputs on a fixed batch of 64 example groups (grouped vs one row per example, eval mode): "
            f"{'**yes**' if identical else '**NO**'} (max |Δ| per output: {ident}).\n\n"
            f"Sample: {args.rows:,} example groups of the training split of features/training_examples "
            f"v{data.version} ({len(flat['seq_len']):,} rows in the one-row-per-example layout); batch "
            f"{tc.batch_size} rows; {args.seconds:.0f} s of training per setting after 3 warm-up steps; model: "
            f"`conf/local.yaml` (`training.model`), {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"torch threads {torch.get_num_threads()}. The last row is the reproducible read order of "
            f"`training.deterministic`: its cost is its ratio to the row above.\n")
    print(body)
    print(json.dumps(results))
    sets = "".join(f" --set {o}" for o in args.overrides)
    write_result(args.out, f"python -m benchmarks.bench_training --config {args.config}{sets} --rows {args.rows} "
                           f"--seconds {args.seconds:.0f}", body)


if __name__ == "__main__":
    main()
