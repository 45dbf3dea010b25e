"""build_sequences throughput: Spark (local[2]) vs DuckDB on the same Parquet events.

    .venv/bin/python -m benchmarks.bench_sequences --sizes 1000000 5000000 20000000 \\
        --out benchmarks/results/sequences.md

For each size, synthetic events (Zipf-skewed users, including power users with ~1% of all
events each) are written once as Parquet under ``benchmarks/_work``. Then, each in a fresh
process whose peak resident memory (the process tree: Python + JVM) is sampled:

* ``spark top-N``: the top-100-per-user selection of ``features.sequences.latest_n_per_user``
  written to Parquet;
* ``spark build``: the whole serving transform (selection, item attributes, encoding,
  ordered padded arrays) of ``build_sequences`` written to Parquet;
* ``duckdb top-N``: the same top-100-per-user query in DuckDB, written to Parquet.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from benchmarks.common import ROOT, WORK, run_worker, write_result
DAY = dt.date(2026, 11, 14)
N = 100


def spark_session(cores: int = 2, ui: bool = False):  # noqa: ANN201
    """The benchmarks' Spark session: ``local[cores]``, 4 shuffle partitions, driver memory 6g; with ``ui`` its
    web UI and monitoring API on a free port (bench_sequences_profile reads its stages from them)."""
    from core.config import load_config
    from core.spark import get_spark

    return get_spark(load_config(ROOT / "conf" / "local.yaml", [
        f"spark.master=local[{cores}]", "spark.conf.spark.sql.shuffle.partitions=4",
        "spark.conf.spark.driver.memory=6g", f"spark.conf.spark.ui.enabled={str(ui).lower()}",
        *(["spark.conf.spark.ui.port=0"] if ui else [])]))


def make_input(n: int) -> Path:
    """Parquet events of ``n`` rows (idempotent), plus an items table."""
    path = WORK / f"events_{n}"
    if (path / "_SUCCESS").exists():
        return path
    from pyspark.sql import functions as F

    spark = spark_session()
    users = max(n // 100, 1000)
    r = F.rand(seed=7)
    # Zipf-like skew: user = floor(users * u^3); the lowest ids are power users
    u = F.floor(F.lit(users) * F.pow(F.rand(seed=11), F.lit(3.0))).cast("bigint")
    df = spark.range(n, numPartitions=max(8, n // 1_000_000)).select(
        u.alias("user_id"), (F.floor(r * 50_000) + 10_000_000).cast("bigint").alias("item_id"),
        F.element_at(F.array(*[F.lit(b) for b in ("click",) * 22 + ("cart", "fav", "buy")]),
                     (F.floor(F.rand(seed=3) * 25) + 1).cast("int")).alias("behavior"),
        F.element_at(F.array(F.lit("search"), F.lit("recommend"), F.lit("promo")),
                     (F.floor(F.rand(seed=5) * 3) + 1).cast("int")).alias("scene"),
        F.lit(None).cast("string").alias("query"),
        (F.lit(dt.datetime.combine(DAY - dt.timedelta(days=29), dt.time())).cast("timestamp")
         + F.expr("make_interval(0, 0, 0, 0, 0, 0, rand(13) * 2591999)")).alias("event_time"))
    df = df.withColumn("dt", F.to_date("event_time").cast("string"))
    df.write.mode("overwrite").parquet(str(path))
    items = WORK / "items"
    if not (items / "_SUCCESS").exists():
        style = F.concat(F.lit("style:s"), (F.col("id") % 12).cast("string"))
        catalogue = spark.range(50_000).select(
            (F.col("id") + 10_000_000).alias("item_id"), (F.col("id") % 2000 + 5000).alias("shop_id"),
            (F.col("id") % 1000 + 9000).alias("brand_id"), (F.col("id") % 60 + 100).alias("category_id"),
            F.array(F.lit("price:mid"), style).alias("tags"), (F.rand(seed=1) * 100 + 1).alias("price"))
        catalogue.write.mode("overwrite").parquet(str(items))
    spark.stop()
    return path


def timed(fn) -> dict[str, float]:  # noqa: ANN001
    """Run ``fn`` twice: the first (cold: JVM start-up, JIT) and the second (warm) wall time."""
    cold = fn()
    warm = fn()
    return {"cold": cold["seconds"], "seconds": warm["seconds"], "rows": warm["rows"]}


def run_spark(path: Path, mode: str) -> dict[str, float]:
    from core import tables as t
    from core.config import load_config
    from features.sequences import (encode_behaviour, encode_items, encode_users, latest_n_per_user,
                                    serving_sequences, end_of_day)

    spark = spark_session()
    events = spark.read.schema(t.EVENTS.schema).parquet(str(path))
    out = WORK / f"out_spark_{mode}"
    cfg = load_config(ROOT / "conf" / "local.yaml").sequences

    def once() -> dict[str, float]:
        t0 = time.time()
        beh = encode_behaviour(events)
        if mode == "topn":
            res = latest_n_per_user(beh, N, end_of_day(DAY), 30)
        else:
            items = encode_items(spark.read.parquet(str(WORK / "items")), cfg)
            users = encode_users(spark.createDataFrame([], t.USERS.schema))
            res = serving_sequences(beh, items, users, DAY, cfg)
        res.write.mode("overwrite").parquet(str(out))
        seconds = time.time() - t0
        return {"seconds": seconds, "rows": spark.read.parquet(str(out)).count()}

    result = timed(once)
    spark.stop()
    return result


def duckdb_topn(path: Path, out: Path) -> str:
    """DuckDB's statement of the top-N selection: the latest ``N`` events per user of the 30 days before the
    end of ``DAY`` in the Parquet events under ``path``, written to ``out``."""
    end = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time())
    start = end - dt.timedelta(days=30)
    return f"""
        COPY (SELECT user_id, item_id, behavior, scene, event_time FROM (
                SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY event_time DESC, item_id DESC,
                                             behavior DESC, scene DESC) AS rn
                FROM read_parquet('{path}/*.parquet')
                WHERE event_time < TIMESTAMP '{end}' AND event_time >= TIMESTAMP '{start}')
              WHERE rn <= {N}) TO '{out}' (FORMAT PARQUET)"""


def run_duckdb(path: Path) -> dict[str, float]:
    import duckdb

    out = WORK / "out_duckdb.parquet"
    con = duckdb.connect()
    con.execute("SET threads TO 2")

    def once() -> dict[str, float]:
        t0 = time.time()
        con.execute(duckdb_topn(path, out))
        seconds = time.time() - t0
        row = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()
        return {"seconds": seconds, "rows": row[0] if row else 0}

    return timed(once)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        engine, path = args.worker
        res = run_duckdb(Path(path)) if engine == "duckdb" else run_spark(Path(path), engine.split(":")[1])
        print(json.dumps(res))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        path = make_input(n)
        for engine in ("spark:topn", "spark:build", "duckdb"):
            r = run_worker("benchmarks.bench_sequences", [engine, str(path)])
            rows.append((n, engine, r))
            print(f"{n:>11,} {engine:<12} {r['cold']:7.1f}s cold {r['seconds']:7.1f}s warm "
                  f"{n / r['seconds']:>12,.0f} ev/s "
                  f"{r['peak_rss_mb']:7.0f} MB  rows={int(r['rows']):,}", flush=True)
    lines = ["| events | engine | cold s | warm s | events/s (warm) | peak RSS (MB) | output rows | warm vs DuckDB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    duck = {n: r["seconds"] for n, e, r in rows if e == "duckdb"}
    for n, e, r in rows:
        lines.append(f"| {n:,} | {e} | {r['cold']:.1f} | {r['seconds']:.1f} | {n / r['seconds']:,.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {int(r['rows']):,} | {r['seconds'] / duck[n]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    write_result(args.out, "python -m benchmarks.bench_sequences --sizes " + " ".join(str(s) for s in args.sizes),
                 table)


if __name__ == "__main__":
    main()
