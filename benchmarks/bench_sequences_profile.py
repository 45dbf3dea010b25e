"""Where the top-N selection's time goes: Spark's stages and operators beside DuckDB's, and other plans
of the same selection.

    .venv/bin/python -m benchmarks.bench_sequences_profile --sizes 5000000 20000000

``bench_sequences`` found Spark's top-100-per-user selection 5.4-7.2x slower than DuckDB's on the same
Parquet events (goal <= 3x), with the selection a window. This benchmark profiles it on the same inputs
(``bench_sequences.make_input``), each engine in a fresh process whose peak memory is sampled, the best of
``--runs`` (3) warm runs after a cold one (the Spark plans' cold runs first, then rounds of warm runs, each round
starting one plan later):

* **Spark**, four plans of the selection, each written to Parquet and checked row for row against the
  first (``exceptAll`` both ways):

  - ``window``: the platform's plan (``features.sequences.latest_n_per_user``), ``row_number() <= 100``
    over a window by user; Spark 3.5 plans it as a partial ``WindowGroupLimit`` before the shuffle, which
    needs the map side sorted by user and time;
  - ``window, no partial limit``: the same with ``spark.sql.optimizer.windowGroupLimitThreshold=-1``, so
    every event is shuffled and sorted once;
  - ``collect``: ``collect_list`` of each user's events, ``sort_array`` and ``slice`` (a hash aggregate,
    no sort of the events; it holds each user's whole window in one task's memory, where the window
    plans hold at most 100 rows per user);
  - ``bounded collect``: users' counts first, ``collect`` for users with at most ``COLLECT_MAX`` (5,000)
    behaviours, the window for the rest (memory bounded whatever the skew);

  for ``window`` and ``bounded collect``, the warm run's stages (tasks' run time, CPU, garbage collection,
  shuffle write and fetch wait, from Spark's monitoring API) and the timed operators of its SQL plan (sort,
  codegen stages, shuffle write);
* **DuckDB**, the same query as ``bench_sequences``, with DuckDB's own profile (time per operator).

Writes ``<name>.md`` and ``<name>.json`` under ``--out-dir``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from benchmarks.common import ROOT, WORK, commit, machine, run_worker, write_result

PLANS = {"window": "window (the platform's plan: row_number, partial WindowGroupLimit before the shuffle)",
         "window_nolimit": "window, no partial limit (windowGroupLimitThreshold=-1)",
         "collect": "collect (collect_list, sort_array, slice per user)",
         "bounded": "bounded collect (collect per user, the window for users over the bound)"}
PROFILED = ("window", "bounded")
COLLECT_MAX = 5_000  # bounded collect: users with more behaviours in the look-back go through the window
_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def metric_seconds(value: str) -> float | None:
    """The total of a Spark SQL timing metric as the monitoring API shows it: ``"1.6 s"``, or
    ``"total (min, med, max (stageId: taskId))\\n562 ms (231 ms, ...)"`` (the total is the first figure after
    the header); None when it is not a duration."""
    text = value.split("\n", 1)[1] if value.startswith("total") and "\n" in value else value
    m = re.match(r"\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(ns|µs|us|ms|s|m|min|h)\b", text)
    return float(m.group(1).replace(",", "")) * _UNITS[m.group(2)] if m else None


def spark_profile(stages: Sequence[Mapping[str, Any]], nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The warm run's profile from the monitoring API's stage records (``/stages/<id>``) and SQL plan nodes
    (``/sql?details=true``): per completed stage its tasks and seconds (run, CPU, GC, shuffle write, fetch
    wait, bytes), and the plan's operators with a timing metric (name, metric, seconds), in plan order."""
    out_stages = []
    for st in stages:
        if st.get("status") != "COMPLETE":
            continue
        out_stages.append({
            "stage": int(st["stageId"]), "tasks": int(st["numTasks"]),
            "run_s": st["executorRunTime"] / 1e3, "cpu_s": st["executorCpuTime"] / 1e9,
            "gc_s": st["jvmGcTime"] / 1e3, "deserialize_s": st.get("executorDeserializeTime", 0) / 1e3,
            "shuffle_write_s": st.get("shuffleWriteTime", 0) / 1e9,
            "fetch_wait_s": st.get("shuffleFetchWaitTime", 0) / 1e3,
            "input_mb": st.get("inputBytes", 0) / 2**20, "shuffle_write_mb": st.get("shuffleWriteBytes", 0) / 2**20,
            "shuffle_read_mb": st.get("shuffleReadBytes", 0) / 2**20, "output_mb": st.get("outputBytes", 0) / 2**20,
            "spill_mb": (st.get("memoryBytesSpilled", 0)) / 2**20})
    ops = []
    for node in nodes:
        for m in node.get("metrics", []):
            seconds = metric_seconds(m["value"])
            if seconds is not None and m["name"] in ("duration", "sort time", "shuffle write time", "task commit time",
                                                     "job commit time", "scan time", "time in aggregation build"):
                ops.append({"node": int(node["nodeId"]), "operator": node["nodeName"], "metric": m["name"],
                            "seconds": seconds})
    return {"stages": sorted(out_stages, key=lambda s: s["stage"]), "operators": ops}


def duckdb_profile(tree: Mapping[str, Any]) -> list[dict[str, Any]]:
    """DuckDB's JSON profile (``PRAGMA enable_profiling='json'``) as (operator, seconds, rows) in plan order
    from the root; operators under a millisecond left out."""
    out: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any]) -> None:
        timing = float(node.get("timing", node.get("operator_timing", 0.0)))
        if timing >= 1e-3:
            out.append({"operator": node.get("type", node.get("operator_type", "?")), "seconds": timing,
                        "rows": int(node.get("intermediate_rows", node.get("operator_cardinality", 0)))})
        for child in node.get("children", []):
            walk(child)

    for root in tree.get("operator", tree.get("children", [])):
        walk(root)
    return out


def interleaved(names: Sequence[str], runs: int, once: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every plan's cold run (in ``names``' order), then ``runs`` warm rounds over all of them, each round
    starting one plan later (so no plan always runs first or after the same one, and every plan's warm runs
    come after every plan's cold one: the JVM's compilation warms all plans alike). Per plan the fastest
    warm run's result, with ``cold`` and every warm run's seconds."""
    cold = {name: once(name)["seconds"] for name in names}
    warm: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(runs):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            warm[name].append(once(name))
    out = {}
    for name in names:
        best = min(warm[name], key=lambda x: x["seconds"])
        out[name] = {**best, "cold": cold[name], "warm_runs": [x["seconds"] for x in warm[name]]}
    return out


def run_spark(path: Path, runs: int) -> dict[str, Any]:
    from urllib.request import urlopen

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from benchmarks.bench_sequences import DAY, N, spark_session
    from core import tables as t
    from features.sequences import encode_behaviour, end_of_day, latest_n_per_user

    spark = spark_session(ui=True)
    sc = spark.sparkContext
    api = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    beh = encode_behaviour(spark.read.schema(t.EVENTS.schema).parquet(str(path)))
    as_of = end_of_day(DAY)

    start = as_of - dt.timedelta(days=30)
    kept = beh.where((F.col("event_time") < F.lit(as_of)) & (F.col("event_time") >= F.lit(start)))
    keys = ["event_time", "item_id", "behavior", "scene"]

    def window_plan() -> Any:
        return latest_n_per_user(beh, N, as_of, 30)

    def collected(rows: Any) -> Any:
        per_user = rows.groupBy("user_id").agg(
            F.slice(F.sort_array(F.collect_list(F.struct(*keys)), asc=False), 1, N).alias("_e"))
        return per_user.select("user_id", F.inline("_e")).select(*beh.columns).withColumn("anchor_time", F.lit(as_of))

    def bounded_plan() -> Any:
        heavy = F.broadcast(kept.groupBy("user_id").count().where(F.col("count") > COLLECT_MAX).select("user_id"))
        w = Window.partitionBy("user_id").orderBy(*[F.col(c).desc() for c in keys])
        windowed = (kept.join(heavy, "user_id", "left_semi").withColumn("_rn", F.row_number().over(w))
                    .where(F.col("_rn") <= N).drop("_rn").withColumn("anchor_time", F.lit(as_of)))
        light = collected(kept.join(heavy, "user_id", "left_anti"))
        return light.unionByName(windowed.select(*beh.columns, "anchor_time"))

    plans = {"window": window_plan, "window_nolimit": window_plan, "collect": lambda: collected(kept),
             "bounded": bounded_plan}

    def once(name: str) -> dict[str, Any]:
        if name == "window_nolimit":
            spark.conf.set("spark.sql.optimizer.windowGroupLimitThreshold", "-1")
        else:
            spark.conf.unset("spark.sql.optimizer.windowGroupLimitThreshold")
        group = f"{name}-{time.time_ns()}"
        sc.setJobGroup(group, name)
        t0 = time.time()
        plans[name]().write.mode("overwrite").parquet(str(WORK / f"out_profile_{name}"))
        seconds = time.time() - t0
        jobs = set(sc.statusTracker().getJobIdsForGroup(group))
        executions = json.load(urlopen(f"{api}/sql?details=false&length=100000"))
        return {"seconds": seconds, "jobs": sorted(jobs),
                "executions": [e["id"] for e in executions if jobs & set(e.get("successJobIds", []))]}

    out: dict[str, Any] = {}
    for name, best in interleaved(list(plans), runs, once).items():
        if name in PROFILED:  # the warm run's stages and operators
            jobs = [json.load(urlopen(f"{api}/jobs/{j}")) for j in best["jobs"]]
            stages = [rec for s in sorted({s for j in jobs for s in j["stageIds"]})
                      for rec in json.load(urlopen(f"{api}/stages/{s}"))]
            nodes = [node for e in best["executions"]
                     for node in json.load(urlopen(f"{api}/sql/{e}?details=true&planDescription=false"))["nodes"]]
            best["profile"] = spark_profile(stages, nodes)
        out[name] = best
    spark.conf.unset("spark.sql.optimizer.windowGroupLimitThreshold")
    reference = spark.read.parquet(str(WORK / "out_profile_window"))
    out["rows"] = reference.count()
    for name in ("window_nolimit", "collect", "bounded"):
        other = spark.read.parquet(str(WORK / f"out_profile_{name}"))
        out[name]["rows_differing"] = reference.exceptAll(other).count() + other.exceptAll(reference).count()
    spark.stop()
    return out


def run_duckdb(path: Path, runs: int) -> dict[str, Any]:
    import duckdb

    from benchmarks.bench_sequences import duckdb_topn

    out_file = WORK / "out_profile_duckdb.parquet"
    profile = WORK / "duckdb_profile.json"
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute("PRAGMA enable_profiling='json'")
    con.execute(f"PRAGMA profiling_output='{profile}'")

    def once() -> dict[str, Any]:
        t0 = time.time()
        con.execute(duckdb_topn(path, out_file))
        seconds = time.time() - t0
        return {"seconds": seconds, "operators": duckdb_profile(json.loads(profile.read_text()))}

    best = interleaved(["duckdb"], runs, lambda _: once())["duckdb"]
    con.execute("PRAGMA disable_profiling")
    row = con.execute(f"SELECT count(*) FROM read_parquet('{out_file}')").fetchone()
    best["rows"] = row[0] if row else 0
    return best


def _profile_lines(title: str, plan: Mapping[str, Any]) -> list[str]:
    """One profiled plan's warm run: its stages and its SQL plan's timed operators."""
    prof = plan["profile"]
    task_s = sum(s["run_s"] for s in prof["stages"])
    lines = ["", f"### {title}, warm run ({plan['seconds']:.1f} s wall)", "",
             "Stages (seconds summed over their tasks; two tasks run at a time on the 2 cores):", "",
             "| stage | tasks | run s | CPU s | GC s | shuffle write s | fetch wait s | input MB | "
             "shuffle write MB | shuffle read MB | spilled MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in prof["stages"]:
        lines.append(f"| {s['stage']} | {s['tasks']} | {s['run_s']:.1f} | {s['cpu_s']:.1f} | {s['gc_s']:.1f} | "
                     f"{s['shuffle_write_s']:.1f} | {s['fetch_wait_s']:.1f} | {s['input_mb']:.0f} | "
                     f"{s['shuffle_write_mb']:.0f} | {s['shuffle_read_mb']:.0f} | {s['spill_mb']:.0f} |")
    lines += ["", "Timed operators of the SQL plan (from the output back to the scan; totals over tasks):", "",
              "| plan node | operator | metric | seconds | share of the tasks' run time |",
              "|---:|---|---|---:|---:|"]
    for o in prof["operators"]:
        share = f"{o['seconds'] / task_s:.0%}" if task_s and o["metric"] != "job commit time" else "–"
        lines.append(f"| {o['node']} | {o['operator']} | {o['metric']} | {o['seconds']:.1f} | {share} |")
    return lines


def markdown(sizes: Mapping[int, Mapping[str, Any]], context: Mapping[str, Any]) -> str:
    lines = ["# Where the top-N selection's time goes: Spark's stages and operators, DuckDB's operators", "",
             f"Command: `{context['command']}`  ",
             f"Machine: {context['machine']}; date {context['date']}; commit {context['commit']}; "
             f"{context['seconds'] / 60:.1f} min.  ",
             "Spark `local[2]`, 4 shuffle partitions, driver memory 6g; DuckDB 2 threads; each engine a fresh process; "
             f"a cold run, then the best of {context['runs']} warm runs (Spark: every plan's cold run first, then "
             "rounds of warm runs over all plans, each round starting one plan later); peak RSS of the process "
             "tree. Inputs: "
             "`bench_sequences.make_input` (Zipf-skewed users with power users; 30 days). The bounded collect "
             f"collects users with at most {context['collect_max']:,} behaviours in the look-back.", "",
             "| events | plan | cold s | warm s | warm vs DuckDB | rows differing from the window's | "
             "peak RSS (MB) |", "|---:|---|---:|---:|---:|---:|---:|"]
    for n, r in sizes.items():
        duck = r["duckdb"]["seconds"]
        for key, label in PLANS.items():
            p = r["spark"][key]
            differing = "–" if key == "window" else f"{int(p['rows_differing']):,}"
            lines.append(f"| {n:,} | Spark: {label} | {p['cold']:.1f} | {p['seconds']:.1f} | "
                         f"{p['seconds'] / duck:.2f}x | {differing} | {r['spark']['peak_rss_mb']:.0f} |")
        lines.append(f"| {n:,} | DuckDB (row_number, the same query) | {r['duckdb']['cold']:.1f} | {duck:.1f} | "
                     f"1.00x | – | {r['duckdb']['peak_rss_mb']:.0f} |")
    for n, r in sizes.items():
        lines += ["", f"## {n:,} events"]
        for key in PROFILED:
            lines += _profile_lines(f"Spark: {PLANS[key]}", r["spark"][key])
        duck = r["duckdb"]
        lines += ["", f"### DuckDB's operators, warm run ({duck['seconds']:.1f} s wall; seconds summed over its "
                  "threads)", "", "| operator | seconds | rows out |", "|---|---:|---:|"]
        lines += [f"| {o['operator']} | {o['seconds']:.2f} | {o['rows']:,} |" for o in duck["operators"]]
        lines += ["", *reading(n, r)]
    return "\n".join(lines)


def reading(n: int, r: Mapping[str, Any]) -> list[str]:
    """The generated reading of one size: the plans' ratios and the window plan's biggest costs."""
    spark, duck = r["spark"], r["duckdb"]["seconds"]
    prof = spark["window"]["profile"]
    task_s = sum(s["run_s"] for s in prof["stages"])
    sorts = sum(o["seconds"] for o in prof["operators"] if o["metric"] == "sort time")
    shuffle = sum(s["shuffle_write_s"] + s["fetch_wait_s"] for s in prof["stages"])
    gc = sum(s["gc_s"] for s in prof["stages"])
    window, bounded, best = spark["window"]["seconds"], spark["bounded"]["seconds"], spark["collect"]["seconds"]
    out = [f"Reading ({n:,} events):", "",
           f"* The platform's plan (the window) takes {window:.1f} s, {window / duck:.1f}x DuckDB's {duck:.1f} s "
           f"({'meets' if window / duck <= 3 else 'does not meet'} the <= 3x goal). The bounded collect takes "
           f"{bounded:.1f} s ({bounded / duck:.1f}x; {window / bounded:.2f}x as fast as the window), the pure "
           f"collect {best:.1f} s ({best / duck:.1f}x)."]
    if task_s:
        cpu = sum(s["cpu_s"] for s in prof["stages"])
        out.append(f"* Of the window plan's {task_s:.1f} task-seconds, its sorts take {sorts:.1f} "
                   f"({sorts / task_s:.0%}), the shuffle's write and fetch wait {shuffle:.1f} "
                   f"({shuffle / task_s:.0%}) and garbage collection {gc:.1f} ({gc / task_s:.0%}); the rest is "
                   "reading and decoding the Parquet, the window and the write (the codegen stages' durations "
                   f"above include their sorts). The tasks were on a CPU for {cpu:.1f} of the {task_s:.1f} s "
                   f"({cpu / task_s:.0%}); the rest is waiting (disk, memory, the other task and other processes "
                   "on the 2 cores).")
    out.append("* The pure collect builds each user's whole window as one array in one task's memory, which grows "
               "with the busiest user's behaviours (a crawler's millions). The bounded collect collects only users "
               "under its bound and sends the rest through the window, whose memory is bounded whatever the skew; "
               "its extra cost is counting the users first. This table times the selection alone; in the job the "
               "assembly follows it (the items' join, a per-user collect_list, the encoding), so a faster "
               "selection gains less in the whole build.")
    for key in ("window_nolimit", "collect", "bounded"):
        if spark[key]["rows_differing"]:
            out.append(f"* **{PLANS[key]} differs from the window's selection in "
                       f"{int(spark[key]['rows_differing']):,} rows.**")
    return out


def run(args: argparse.Namespace, command: str) -> str:
    from benchmarks.bench_sequences import make_input

    if args.render:  # the tables and reading of a saved run, with this code's wording; its measurement command kept
        saved = json.loads(args.render.read_text())
        text = markdown({int(n): r for n, r in saved["sizes"].items()}, saved["context"])
        if args.out_dir:
            write_result(args.out_dir / f"{args.name}.md", f"{saved['context']['command']} (rendered again by "
                         f"{command})", text)
        return text
    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    sizes: dict[int, dict[str, Any]] = {}
    for n in args.sizes:
        path = make_input(n)
        sizes[n] = {engine: run_worker("benchmarks.bench_sequences_profile", [engine, str(path), str(args.runs)])
                    for engine in ("spark", "duckdb")}
        print(f"{n:,} events: " + ", ".join(f"{k} {sizes[n]['spark'][k]['seconds']:.1f} s" for k in PLANS)
              + f", duckdb {sizes[n]['duckdb']['seconds']:.1f} s", flush=True)
    context = {"command": command, "machine": machine(), "date": str(dt.date.today()), "commit": commit(),
               "runs": args.runs, "seconds": time.time() - started, "collect_max": COLLECT_MAX}
    text = markdown(sizes, context)
    if args.out_dir:
        write_result(args.out_dir / f"{args.name}.md", command, text)
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(
            {"context": context, "sizes": {str(n): r for n, r in sizes.items()}}, indent=1) + "\n")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000_000, 20_000_000])
    p.add_argument("--runs", type=int, default=3, help="warm runs after the cold one (the best is kept)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="sequences_profile")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="measure nothing: write the markdown of a saved run (<name>.json) again")
    p.add_argument("--worker", nargs=3, metavar=("ENGINE", "PATH", "RUNS"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.worker:
        engine, path, runs = args.worker
        res = run_spark(Path(path), int(runs)) if engine == "spark" else run_duckdb(Path(path), int(runs))
        print(json.dumps(res))
        return
    from benchmarks.common import bench_main

    bench_main("bench_sequences_profile", args, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
