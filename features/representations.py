"""Reading the published representation table: lookups, exact similarity search, tier distributions.

Everything runs on Spark against one snapshot of ``outputs/user_representations``; only
bounded results (one user, the top k, seven tier counts) reach the driver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core import tables as t
from core.errors import PlatformError, TableNotFound

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from core.delta import DeltaTables

SPEC = t.USER_REPRESENTATIONS


@dataclass(frozen=True)
class Snapshot:
    """One date of the table at one table version."""

    version: int
    day: str
    frame: "DataFrame"


def snapshot(tables: "DeltaTables", day: str | None = None, version: int | None = None) -> Snapshot:
    """The partition ``day`` (default: the latest) of table version ``version`` (default: latest).

    Raises:
        TableNotFound: the table, version or date does not exist (one line, with what exists).
    """
    if not tables.exists(SPEC):
        raise TableNotFound(f"{SPEC.name} does not exist yet; run jobs/publish_user_representations.py")
    latest = tables.version(SPEC)
    v = latest if version is None else version
    if v < 0 or v > latest:
        raise TableNotFound(f"{SPEC.name} has no version {v} (versions 0..{latest})")
    days = tables.partitions(SPEC, v)
    if not days:
        raise TableNotFound(f"{SPEC.name} version {v} has no partition")
    d = days[-1] if day is None else day
    if d not in days:
        raise TableNotFound(f"{SPEC.name} version {v} has no date {d} (dates: {days[0]}..{days[-1]})")
    return Snapshot(v, d, tables.read(SPEC, dt=d, version=v))


def lookup(snap: Snapshot, user_id: int) -> dict[str, Any]:
    rows = snap.frame.where(snap.frame.user_id == user_id).limit(2).collect()
    if not rows:
        raise PlatformError(f"user {user_id} is not in {SPEC.name} dt={snap.day} (version {snap.version})")
    r = rows[0].asDict()
    vec = [float(x) for x in r["embedding"]]
    return {"user_id": r["user_id"], "dt": snap.day, "table_version": snap.version, "ppp_tier": r["ppp_tier"],
            "ppp_probs": [round(float(p), 6) for p in r["ppp_probs"]], "model_name": r["model_name"],
            "model_version": r["model_version"], "dim": len(vec), "norm": math.sqrt(sum(x * x for x in vec)),
            "embedding": vec}


def similar(snap: Snapshot, user_id: int, k: int) -> list[dict[str, Any]]:
    """Exact top-``k`` users by cosine similarity to ``user_id`` (computed on the executors)."""
    from pyspark.sql import functions as F

    target = lookup(snap, user_id)["embedding"]
    tnorm = math.sqrt(sum(x * x for x in target)) or 1.0
    tvec = F.array(*[F.lit(float(x)) for x in target])
    dot = F.aggregate(F.zip_with("embedding", tvec, lambda a, b: a * b), F.lit(0.0).cast("double"),
                      lambda acc, x: acc + x)
    norm = F.sqrt(F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    scored = (snap.frame.where(F.col("user_id") != user_id)
              .select("user_id", "ppp_tier", (dot / (F.greatest(norm, F.lit(1e-12)) * tnorm)).alias("cosine")))
    top = scored.orderBy(F.col("cosine").desc(), F.col("user_id")).limit(k).collect()  # k rows
    return [{"user_id": r.user_id, "cosine": float(r.cosine), "ppp_tier": r.ppp_tier} for r in top]


def tier_distribution(tables: "DeltaTables", snap: Snapshot) -> dict[str, Any]:
    """Counts and shares of ``ppp_tier`` on the snapshot's date and the previous published date."""
    days = tables.partitions(SPEC, snap.version)
    previous = [d for d in days if d < snap.day]
    out: dict[str, Any] = {"dt": snap.day, "table_version": snap.version,
                           "previous_dt": previous[-1] if previous else None, "tiers": []}
    now = _counts(snap.frame)
    before = _counts(tables.read(SPEC, dt=previous[-1], version=snap.version)) if previous else {}
    n_now, n_before = sum(now.values()), sum(before.values())
    for tier in range(1, 8):
        share = now.get(tier, 0) / n_now if n_now else 0.0
        row = {"tier": tier, "users": now.get(tier, 0), "share": share}
        if previous:
            prev_share = before.get(tier, 0) / n_before if n_before else 0.0
            row.update({"previous_users": before.get(tier, 0), "share_change_pp": 100 * (share - prev_share)})
        out["tiers"].append(row)
    out["users"] = n_now
    return out


def _counts(df: "DataFrame") -> dict[int, int]:
    return {int(r["ppp_tier"]): int(r["count"]) for r in df.groupBy("ppp_tier").count().collect()}  # <= 7 rows


def view_name(name: str) -> str:
    """``raw/events`` -> ``raw_events``; ``outputs/user_representations`` also as ``user_representations``."""
    return name.replace("/", "_")


def register_views(tables: "DeltaTables") -> list[str]:
    """Register every existing lake table as a temporary view for Spark SQL; returns the names."""
    from features.quality import quarantine_spec

    specs = [*t.RAW_TABLES, *t.TRUTH_TABLES, t.USER_SEQUENCES, t.TRAINING_EXAMPLES, t.FEATURE_STATS,
             t.USER_REPRESENTATIONS, *[quarantine_spec(s) for s in t.RAW_TABLES]]
    names = []
    for spec in specs:
        if tables.exists(spec):
            df = tables.read(spec)
            df.createOrReplaceTempView(view_name(spec.name))
            names.append(view_name(spec.name))
            if spec is t.USER_REPRESENTATIONS:
                df.createOrReplaceTempView("user_representations")
                names.append("user_representations")
    return names
