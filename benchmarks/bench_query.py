"""Latency of ``jobs/query.py`` lookups: Arrow on the snapshot's files against Spark, side by side.

    .venv/bin/python -m benchmarks.bench_query --config conf/local.yaml [--set lake_root=...] [--repeats 5]

Each repeat runs, as a user would (a new process each time: start-up included), ``query user U``
and ``query tiers`` on the default path (Arrow on the snapshot's files when the lake is local and
``delta.engine`` is ``rs``) and with ``--spark``, interleaved so that the machine's load falls on both
alike; the table gives the median and the fastest wall time of each and their ratio. It also says how
the published partition's files are laid out for a lookup (rows sorted by ``user_id`` in each file,
row groups, and how many row groups' ``user_id`` range holds U: what Arrow reads). Writes
``query.md`` and ``query.json`` under ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, commit, latest_published, machine, set_args, write_result

COMMANDS = ("user", "tiers")


def layout(files: list[str], user_id: int) -> dict[str, Any]:
    """How a lookup of ``user_id`` meets the files: row groups in all, row groups whose user_id statistics
    hold it, and whether every file is sorted by user_id."""
    import numpy as np
    import pyarrow.parquet as pq

    groups = holding = 0
    ordered = True
    for path in files:
        meta = pq.ParquetFile(path).metadata
        col = meta.schema.names.index("user_id")
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            groups += 1
            holding += int(stats is None or stats.min <= user_id <= stats.max)
        ids = pq.read_table(path, columns=["user_id"]).column("user_id").to_numpy()
        ordered = ordered and bool(np.all(np.diff(ids) >= 0))
    return {"files": len(files), "row_groups": groups, "row_groups_read": holding, "sorted": ordered}


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"bench_query: {' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--user", type=int, help="the user to look up (default: the first of the latest partition)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    from core import tables as t
    from core.config import load_config

    cfg = load_config(args.config, args.overrides)
    _, version, day, files = latest_published(cfg, "bench_query")
    import pyarrow.parquet as pq

    user = args.user if args.user is not None else int(pq.read_table(files[0], columns=["user_id"])[0][0].as_py())
    users = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    base = [sys.executable, "-m", "jobs.query", "--config", args.config, "--log-level", "WARNING",
            *set_args(args.overrides)]
    cmds = {"user": ["user", str(user)], "tiers": ["tiers"]}
    times: dict[str, list[float]] = {f"{c} {how}": [] for c in COMMANDS for how in ("arrow", "spark")}
    for _ in range(args.repeats):
        for c in COMMANDS:
            times[f"{c} arrow"].append(timed([*base, *cmds[c]]))
            times[f"{c} spark"].append(timed([*base, *cmds[c], "--spark"]))
    summary = {k: {"median_s": statistics.median(v), "min_s": min(v), "runs_s": v} for k, v in times.items()}
    found = layout(files, user)
    command = "python -m benchmarks.bench_query " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "machine": machine(), "commit": commit(), "table": t.USER_REPRESENTATIONS.name,
              "dt": day, "version": version, "users": users, "user": user, "layout": found, "summary": summary}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "query.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Query latency: Arrow on the snapshot's files against Spark", "",
             f"Command: `{command}`  ", f"Machine: {machine()}; commit {commit()}.  ",
             f"Table: {t.USER_REPRESENTATIONS.name} dt={day} (version {version}), {users:,} users; looked-up user "
             f"{user}. Files: {found['files']}, row groups: {found['row_groups']}, row groups whose user_id range "
             f"holds the user (what the lookup reads): {found['row_groups_read']}; rows sorted by user_id in "
             f"every file: {'yes' if found['sorted'] else 'no'}.  ",
             f"Each of {args.repeats} repeats ran every command as a new process (start-up included), the "
             "Arrow and Spark paths interleaved.", "",
             "| command | Arrow median s | Arrow fastest s | Spark median s | Spark fastest s "
             "| Spark / Arrow (median) |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in COMMANDS:
        a, s = summary[f"{c} arrow"], summary[f"{c} spark"]
        lines.append(f"| `query {c}` | {a['median_s']:.2f} | {a['min_s']:.2f} | {s['median_s']:.2f} | "
                     f"{s['min_s']:.2f} | {s['median_s'] / a['median_s']:.1f} |")
    write_result(args.out_dir / "query.md", command, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
