"""Look up and search ``outputs/user_representations`` from the command line.

    python -m jobs.query --config conf/local.yaml user 100042 [--date D] [--version N] [--full]
    python -m jobs.query --config conf/local.yaml similar 100042 --k 10 [--date D] [--measure balanced|cosine] [--exact]
    python -m jobs.query --config conf/local.yaml tiers [--date D]
    python -m jobs.query --config conf/local.yaml sql "SELECT ppp_tier, count(*) FROM user_representations GROUP BY 1"
    python -m jobs.query --config conf/local.yaml history

``--date`` defaults to the latest published date and ``--version`` to the latest table
version (Delta time travel). Output is readable text, or JSON with ``--json``. An unknown
user, date or version prints one line and exits 1. ``sql`` sees every lake table as a view
named after its path (``raw_events``, ``features_user_sequences``, ``user_representations``...).

``user`` and ``tiers`` read the snapshot's Parquet files with Arrow, without starting Spark, when the
lake is local under the embedded ``delta.engine: rs`` (about a second instead of a Spark start-up;
``benchmarks/results/query.md``); ``--spark`` runs them on Spark, as every other command and every
cluster-sized or object-store table does.

``similar`` ranks by the mean of the per-block cosines of the vector's blocks (dense part,
interests, prices: the layout the nightly job recorded in its commit) when the partition has
one, since the whole-vector cosine all but ignores the small interests block
(``benchmarks/results/neighbours.md``); ``--measure cosine`` ranks by the whole-vector cosine.
It searches the date's nearest-neighbour index, without Spark, when the nightly job built one
(``publish.index``; recall and latency in ``benchmarks/results/similar.md``): the scores are exact,
the candidate set approximate. ``--exact`` (or a date, measure or lake without an index) runs the
exact scan of every vector on Spark.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables, get_tables_without_spark
from core.spark import get_spark
from features import representations as reps

JOB = "query"


def _text(obj: Any, args: argparse.Namespace) -> str:
    if args.json:
        return json.dumps(obj, default=str, indent=None if args.command == "sql" else 2)
    cmd = args.command
    if cmd == "user":
        vec = obj["embedding"]
        head = ", ".join(f"{x:+.4f}" for x in (vec if args.full else vec[:8]))
        probs = " ".join(f"{p:.3f}" for p in obj["ppp_probs"])
        return (f"user {obj['user_id']}  dt={obj['dt']}  table v{obj['table_version']}  model "
                f"{obj['model_name']} v{obj['model_version']}\n  purchasing-power tier {obj['ppp_tier']}  "
                f"(p1..p7: {probs})\n  embedding: {obj['dim']} floats, L2 norm {obj['norm']:.4f}\n"
                f"  [{head}{'' if args.full else ', ...'}]")
    if cmd == "similar":
        blocks, ix = obj["blocks"], obj.get("index")
        how = (f"index: {ix['nprobe']} of {ix['nlist']} lists scanned" if ix else "exact")
        measure = (f"balanced cosine over {len(blocks)} blocks: {', '.join(blocks)}; {how}"
                   if obj["measure"] == "balanced" else f"cosine over the whole vector; {how}")
        lines = [f"{len(obj['neighbours'])} nearest users to {obj['user_id']} ({measure}) dt={obj['dt']}:"]
        lines += [f"  {n['user_id']:>10}  {n['cosine']:.4f}  tier {n['ppp_tier']}" for n in obj["neighbours"]]
        return "\n".join(lines)
    if cmd == "tiers":
        prev = obj["previous_dt"]
        lines = [f"purchasing-power tiers dt={obj['dt']} ({obj['users']:,} users)"
                 + (f", change vs {prev}" if prev else " (no earlier date to compare)")]
        for r in obj["tiers"]:
            change = f"  {r['share_change_pp']:+.2f} pp" if prev else ""
            lines.append(f"  tier {r['tier']}: {r['users']:>8,}  {100 * r['share']:5.1f}%{change}")
        return "\n".join(lines)
    if cmd == "sql":
        cols = obj["columns"]
        lines = ["\t".join(cols)] + ["\t".join(str(r.get(c)) for c in cols) for r in obj["rows"]]
        if obj["truncated"]:
            lines.append(f"... (first {len(obj['rows'])} rows; raise --limit)")
        return "\n".join(lines)
    lines = [f"{'version':>7}  {'committed (UTC)':<19}  {'operation':<12}  {'dates':<12}  model  job"]
    for c in obj["history"]:
        lines.append(f"{c['version']:>7}  {c['timestamp'][:19]:<19}  {c['operation']:<12}  {c['dt'] or '-':<12}  "
                     f"{c['model_version'] or '-':<5}  {c['job'] or '-'}")
    return "\n".join(lines)


def without_spark(ctx: JobContext, day: str | None, version: int | None) -> dict[str, Any] | None:
    """``user`` / ``tiers`` read from the snapshot's local files with Arrow, ``similar`` through the date's
    nearest-neighbour index; None where Spark answers (the other commands, ``--spark``, ``similar --exact``,
    the Spark Delta engine, files outside the local file system, no index for this date and measure)."""
    args = ctx.args
    spark = getattr(args, "spark", False) or getattr(args, "exact", False)
    if spark or args.command not in ("user", "tiers", "similar"):
        return None
    tables = get_tables_without_spark(ctx.cfg)
    if tables is None:
        return None
    v, d = reps.resolve(tables, day, version)
    if args.command == "tiers":
        return reps.tier_counts_files(tables, v, d)
    if args.command == "similar":
        found = reps.indexed_similar(tables, v, d, args.user_id, args.k, args.measure, args.nprobe)
        return None if found is None else _neighbours(args.user_id, d, v, found)
    paths = reps.local_paths(tables.files(t.USER_REPRESENTATIONS, dt=d, version=v))
    return None if paths is None else reps.lookup_files(paths, args.user_id, v, d)


def _neighbours(user_id: int, day: str, version: int, found: reps.Neighbours) -> dict[str, Any]:
    return {"user_id": user_id, "dt": day, "table_version": version, "measure": found.measure,
            "blocks": list(found.blocks), "layout_version": found.layout_version, "method": found.method,
            "index": found.index, "neighbours": found.rows}


def run(ctx: JobContext) -> str:
    args = ctx.args
    day = args.date.isoformat() if getattr(args, "date", None) else None
    version = getattr(args, "version", None)
    obj: Any = without_spark(ctx, day, version)
    if obj is not None:
        return _text(_shown(obj, args), args)
    tables = get_tables(get_spark(ctx.cfg), ctx.cfg)
    if args.command == "user":
        obj = reps.lookup(reps.snapshot(tables, day, version), args.user_id)
    elif args.command == "similar":
        snap = reps.snapshot(tables, day, version)
        obj = _neighbours(args.user_id, snap.day, snap.version,
                          reps.similar(tables, snap, args.user_id, args.k, args.measure))
    elif args.command == "tiers":
        obj = reps.tier_distribution(tables, reps.snapshot(tables, day, version))
    elif args.command == "sql":
        views = reps.register_views(tables)
        df = tables.spark.sql(args.statement)
        rows = df.limit(args.limit + 1).collect()  # bounded by --limit
        obj = {"views": views, "columns": df.columns, "rows": [r.asDict(recursive=True) for r in rows[:args.limit]],
               "truncated": len(rows) > args.limit}
    else:
        hist = tables.history(t.USER_REPRESENTATIONS, args.limit)
        obj = {"table": t.USER_REPRESENTATIONS.name, "history": [
            {"version": c.version, "timestamp": c.timestamp.isoformat(), "operation": c.operation,
             "dt": c.metadata.get("dt"), "model_version": c.metadata.get("model_version"),
             "rows": c.metadata.get("rows"), "job": c.metadata.get("job")} for c in hist]}
    return _text(_shown(obj, args), args)


def _shown(obj: Any, args: argparse.Namespace) -> Any:
    """A user's JSON shows the first 8 floats of the vector unless ``--full``."""
    if args.command == "user" and not args.full and args.json:
        return {**obj, "embedding": obj["embedding"][:8], "embedding_truncated": True}
    return obj


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = p.add_subparsers(dest="command", required=True)

    def snapshot_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--date", type=parse_date, help="published date (default: the latest)")
        sp.add_argument("--version", type=int, help="table version (default: the latest; Delta time travel)")

    u = sub.add_parser("user", help="one user's vector, tier and probabilities")
    u.add_argument("user_id", type=int)
    u.add_argument("--full", action="store_true", help="print the whole vector")
    spark_arg = "read on Spark (default: Arrow on the snapshot's files when the lake is local and delta.engine is rs)"
    u.add_argument("--spark", action="store_true", help=spark_arg)
    snapshot_args(u)
    s = sub.add_parser("similar", help="nearest users by (block-balanced) cosine similarity (the date's index, "
                                       "or the exact scan on Spark)")
    s.add_argument("user_id", type=int)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--exact", action="store_true", help="score every vector on Spark instead of searching the index")
    s.add_argument("--nprobe", type=int, help="index lists to scan (default: publish.index.nprobe at build time); "
                                              "more is slower and finds more of the exact neighbours")
    s.add_argument("--measure", choices=reps.MEASURES,
                   help="balanced: the mean of the cosines of the vector's blocks (the layout recorded by the "
                        "nightly job); cosine: the whole vectors (default: balanced when the partition has a "
                        "recorded layout, else cosine)")
    snapshot_args(s)
    tr = sub.add_parser("tiers", help="tier distribution and its change from the previous date")
    tr.add_argument("--spark", action="store_true", help=spark_arg)
    snapshot_args(tr)
    q = sub.add_parser("sql", help="Spark SQL over the lake's tables")
    q.add_argument("statement")
    q.add_argument("--limit", type=int, default=100, help="rows to print (default 100)")
    h = sub.add_parser("history", help="the table's Delta history")
    h.add_argument("--limit", type=int, default=50)
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
