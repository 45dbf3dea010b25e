"""The paper's serving split: score K candidate items per user with the user part computed once
(then only the item-side CTR head per candidate) vs the whole network per (user, item) pair.

    .venv/bin/python -m benchmarks.bench_model_split --users 32 --ks 10 100 1000 \\
        --out benchmarks/results/model_split.md

Default model sizes (conf/local.yaml), random weights, synthetic inputs shaped like the demo
world's (sequence lengths spread over 1..max_len), 2 torch threads, forward only. "Whole" runs
the user tower again for every (user, item) pair (in chunks of ``--chunk`` pairs) before the
same CTR head; both ways give the same CTR probabilities (checked).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from core.config import load_config
from training.model import build_model
from training.spec import ModelSpec


def user_batch(spec: ModelSpec, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    L, K = spec.max_len, spec.max_tags
    lens = torch.randint(1, L + 1, (n,), generator=gen)
    valid = torch.arange(L).unsqueeze(0) < lens.unsqueeze(1)

    def ids(vocab: str, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(2, spec.vocab[vocab], shape, generator=gen)

    batch = {"seq_len": lens}
    for key, vocab in (("seq_item", "item"), ("seq_shop", "shop"), ("seq_brand", "brand"),
                       ("seq_category", "category"), ("seq_behavior", "behavior"), ("seq_scene", "scene"),
                       ("seq_time_bucket", "time_bucket")):
        batch[key] = ids(vocab, (n, L)) * valid
    batch["seq_tags"] = (ids("tag", (n, L, K)) * valid.unsqueeze(-1)).reshape(n, L * K)
    batch["seq_log_price"] = torch.rand(n, L, generator=gen) * 5 * valid
    for key, vocab in (("user_age", "age"), ("user_gender", "gender"), ("user_city", "city")):
        batch[key] = ids(vocab, (n,))
    batch["user_dense"] = torch.rand(n, spec.user_dense_dim, generator=gen)
    return batch


def item_batch(spec: ModelSpec, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"item": torch.randint(2, spec.vocab["item"], (n,), generator=gen),
            "item_shop": torch.randint(2, spec.vocab["shop"], (n,), generator=gen),
            "item_brand": torch.randint(2, spec.vocab["brand"], (n,), generator=gen),
            "item_category": torch.randint(2, spec.vocab["category"], (n,), generator=gen),
            "item_tags": torch.randint(2, spec.vocab["tag"], (n, spec.max_tags), generator=gen),
            "item_log_price": torch.rand(n, generator=gen) * 5}


def timed(fn, repeat: int = 2) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--chunk", type=int, default=2048, help="rows per forward call of the whole network")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config)
    spec = ModelSpec.from_config(cfg)
    model = build_model(spec).eval()
    part, scorer = model.user_part().eval(), model.item_scorer().eval()
    gen = torch.Generator().manual_seed(0)
    users = user_batch(spec, args.users, gen)
    rows = []
    with torch.no_grad():
        for k in args.ks:
            items = item_batch(spec, args.users * k, gen)

            def split() -> torch.Tensor:
                rep, _ = part(users)
                return scorer(rep.repeat_interleave(k, dim=0), items)

            def whole() -> torch.Tensor:
                out = []
                for s in range(0, args.users * k, args.chunk):
                    idx = torch.arange(s, min(s + args.chunk, args.users * k))
                    # the user tower recomputed for every pair, then the same CTR head
                    rep, _ = part({key: v[idx // k] for key, v in users.items()})
                    out.append(scorer(rep, {key: v[idx] for key, v in items.items()}))
                return torch.cat(out)

            diff = float((split() - whole()).abs().max())
            t_split, t_whole = timed(split), timed(whole, repeat=1)
            pairs = args.users * k
            rows.append((k, pairs, t_split, t_whole, diff))
            print(f"K={k}: split {t_split:.3f}s, whole {t_whole:.3f}s, speed-up {t_whole / t_split:.1f}x, "
                  f"max |diff| {diff:.2e}", flush=True)
    lines = ["| candidates per user (K) | (user, item) pairs | user part once + item head (s) | "
             "whole network per pair (s) | pairs/s split | pairs/s whole | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for k, pairs, ts, tw, _ in rows:
        lines.append(f"| {k} | {pairs:,} | {ts:.3f} | {tw:.3f} | {pairs / ts:,.0f} | {pairs / tw:,.0f} | "
                     f"{tw / ts:.1f}x |")
    table = "\n".join(lines)
    print(table)
    write_result(args.out, f"python -m benchmarks.bench_model_split --users {args.users} --ks "
                 f"{' '.join(map(str, args.ks))}", f"{args.users} users, default model sizes, forward only.\n\n{table}")


if __name__ == "__main__":
    main()
