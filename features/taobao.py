"""The Taobao user-behaviour log (Tianchi dataset 649) mapped into the contract's input tables.

The file (``../shared/data/taobao_userbehavior/UserBehavior_sample.csv``; see that folder's README) has
no header and five columns: ``user_id,item_id,category_id,behavior_type,timestamp`` (Unix seconds).
The mapping (docs/taobao.md):

- ``raw/events``: ``pv`` becomes ``click``, ``cart``/``fav``/``buy`` keep their names; ``event_time``
  is the timestamp in UTC and ``dt`` its UTC date; scene and query are unknown (null).
- The time-window rule: the log's documented period is 2017-11-25 00:00 to 2017-12-04 00:00
  Asia/Shanghai (UTC+8). Events outside ``[start, end)`` are dropped and counted by side (the
  sample has 39, back to 2017-09-11, as the original file has). Exact duplicate lines keep one copy,
  also counted.
- ``raw/items``: ``item_id`` and ``category_id``; shop, brand, tags and price are unknown (null). An item
  logged under two categories keeps its most frequent one (ties: the smaller id), counted.
- ``raw/users``: one row per user with an unknown profile (the log has none).
- ``raw/impressions``, the next-day interaction lists: for each label day ``D`` and each user with
  events both before ``D`` and on ``D``, the list stamped ``D 00:00 UTC`` holds every item the
  user touched on ``D`` (``clicked = 1``; ``carted``/``bought`` mark real carts and purchases) and
  ``ratio`` negatives per positive: items the user did not touch on ``D``, drawn in proportion to
  their events on ``D`` by every user (a uniformly drawn event of ``D``'s item), seeded, so that
  negatives come from the same distribution as positives. ``rank_features`` are two point-in-time
  popularity counts of the ``popularity_days`` before ``D``: ``log1p`` of the item's and of its
  category's events. Next-day purchase is ``bought`` over these
  lists (the CTCVR task).
- PPP tiers, follows and shop preferences have no signal in the log: their tables are not written,
  which disables those tasks through the platform's normal mechanism.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from core import tables as t
from core.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao_userbehavior"
FILE = "UserBehavior_sample.csv"
BEHAVIORS = {"pv": "click", "cart": "cart", "fav": "fav", "buy": "buy"}
SHANGHAI = _dt.timezone(_dt.timedelta(hours=8))
# the period the dataset documents: 2017-11-25 .. 2017-12-03 in Asia/Shanghai
WINDOW_START = _dt.datetime(2017, 11, 25, tzinfo=SHANGHAI)
WINDOW_END = _dt.datetime(2017, 12, 4, tzinfo=SHANGHAI)
RANK_FEATURES = ("log1p_item_events", "log1p_category_events")
_SPACE = 1 << 53  # uniform draws with 53-bit resolution: exact indexes into logs of up to 2^40 events

SOURCE_SCHEMA = "user_id BIGINT, item_id BIGINT, category_id BIGINT, behavior_type STRING, ts BIGINT"


@dataclass(frozen=True)
class ImportSettings:
    """How the log becomes tables.

    Attributes:
        start, end: the kept period ``[start, end)`` (aware datetimes).
        ratio: negatives per positive in a next-day list.
        popularity_days: the days before ``D`` whose events give the popularity rank features.
        seed: the negatives' draw.
        label_start: the first label day (default: the second UTC day of the period, so that every
            list has at least a day of history before it).
    """

    start: _dt.datetime = WINDOW_START
    end: _dt.datetime = WINDOW_END
    ratio: int = 4
    popularity_days: int = 7
    seed: int = 2017
    label_start: _dt.date | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None or self.start >= self.end:
            raise PlatformError(f"taobao import: the period [{self.start}, {self.end}) must be two aware times, "
                                f"start before end")
        if self.ratio < 1 or self.popularity_days < 1:
            raise PlatformError(f"taobao import: --ratio ({self.ratio}) and --popularity-days "
                                f"({self.popularity_days}) must be >= 1")

    def utc_days(self) -> list[_dt.date]:
        """The UTC dates the period touches, in order."""
        first = self.start.astimezone(_dt.timezone.utc).date()
        last = (self.end.astimezone(_dt.timezone.utc) - _dt.timedelta(microseconds=1)).date()
        return [first + _dt.timedelta(days=i) for i in range((last - first).days + 1)]

    def label_days(self) -> list[_dt.date]:
        days = self.utc_days()
        first = self.label_start or days[min(1, len(days) - 1)]
        out = [d for d in days if d >= first]
        if not out or first <= days[0]:
            raise PlatformError(f"taobao import: label start {first} must fall after the first day of the period "
                                f"({days[0]}) and on or before its last ({days[-1]})")
        return out


@dataclass
class ImportReport:
    """What the import kept and dropped (also written into the tables' commit metadata)."""

    source_rows: int = 0
    duplicates: int = 0
    before_start: int = 0
    after_end: int = 0
    events: int = 0
    items_with_two_categories: int = 0
    by_behavior: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"source_rows": self.source_rows, "duplicates_dropped": self.duplicates,
                "before_start_dropped": self.before_start, "after_end_dropped": self.after_end,
                "events": self.events, "items_with_two_categories": self.items_with_two_categories,
                "by_behavior": dict(self.by_behavior)}


def source_file(folder: Path) -> Path:
    """The log's path in ``folder`` (or ``folder`` itself when it is the file); :func:`read_log` checks it."""
    return folder if folder.is_file() else folder / FILE


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_log(spark: "SparkSession", path: Path) -> "DataFrame":
    """The log's lines as ``user_id, item_id, category_id, behavior_type, ts``.

    Raises:
        PlatformError: a line that does not parse into five fields (naming how many), or an unknown
            ``behavior_type`` (naming it).
    """
    from pyspark.sql import functions as F

    if not path.is_file():
        raise PlatformError(f"Taobao log not found: {path}; pass --source FOLDER_OR_FILE (the taobao_userbehavior "
                            f"folder of ../shared/data)")
    raw = spark.read.csv(str(path), schema=SOURCE_SCHEMA + ", _corrupt STRING", header=False,
                         mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt").cache()
    bad = raw.where(F.col("_corrupt").isNotNull() | F.col("user_id").isNull() | F.col("item_id").isNull()
                    | F.col("behavior_type").isNull() | F.col("ts").isNull())
    n_bad = bad.count()
    if n_bad:
        example = bad.select(F.coalesce("_corrupt", F.lit("(a field is empty)"))).first()
        raw.unpersist()
        raise PlatformError(f"{path}: {n_bad:,} lines do not parse as user_id,item_id,category_id,behavior_type,"
                            f"timestamp (e.g. {example[0] if example else '?'!r}); is this the Tianchi "
                            f"UserBehavior file?")
    unknown = [r[0] for r in raw.where(~F.col("behavior_type").isin(*BEHAVIORS)).select("behavior_type")
               .distinct().limit(5).collect()]
    if unknown:
        raw.unpersist()
        raise PlatformError(f"{path}: behavior_type {', '.join(map(repr, unknown))} is not one of "
                            f"{', '.join(BEHAVIORS)}; fix the file or map the value in features/taobao.py")
    return raw.drop("_corrupt")


def clean(log: "DataFrame", s: ImportSettings, report: ImportReport) -> "DataFrame":
    """Exact duplicate lines and events outside ``[s.start, s.end)`` dropped (counted into ``report``)."""
    from pyspark.sql import functions as F

    lo, hi = int(s.start.timestamp()), int(s.end.timestamp())
    distinct = log.dropDuplicates()
    report.source_rows = log.count()
    # counted on distinct lines: a duplicate outside the period counts once, as a duplicate
    side = distinct.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("ts") < lo).cast("int")).alias("before"),
                        F.sum((F.col("ts") >= hi).cast("int")).alias("after")).collect()[0]  # one row
    report.duplicates = report.source_rows - int(side["n"])
    report.before_start, report.after_end = int(side["before"] or 0), int(side["after"] or 0)
    kept = distinct.where((F.col("ts") >= lo) & (F.col("ts") < hi))
    return kept


def events_frame(log: "DataFrame") -> "DataFrame":
    """``raw/events`` rows of the cleaned log."""
    from pyspark.sql import functions as F

    behavior = F.create_map(*[F.lit(x) for kv in BEHAVIORS.items() for x in kv])[F.col("behavior_type")]
    return log.select(
        "user_id", "item_id", behavior.alias("behavior"), F.lit(None).cast("string").alias("scene"),
        F.lit(None).cast("string").alias("query"), F.timestamp_seconds("ts").alias("event_time"),
        F.date_format(F.timestamp_seconds("ts"), "yyyy-MM-dd").alias("dt"))


def items_frame(log: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """(``raw/items`` rows: the item's most frequent category, ties to the smaller id; the items logged
    under more than one category)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per = log.groupBy("item_id", "category_id").count()
    w = Window.partitionBy("item_id").orderBy(F.desc("count"), F.asc_nulls_last("category_id"))
    ranked = per.withColumn("_r", F.row_number().over(w)).withColumn("_n", F.count(F.lit(1)).over(
        Window.partitionBy("item_id")))
    items = ranked.where(F.col("_r") == 1).select(
        "item_id", F.lit(None).cast("bigint").alias("shop_id"), F.lit(None).cast("bigint").alias("brand_id"),
        "category_id", F.lit(None).cast("array<string>").alias("tags"), F.lit(None).cast("double").alias("price"))
    return items, ranked.where((F.col("_r") == 1) & (F.col("_n") > 1)).select("item_id")


def users_frame(log: "DataFrame") -> "DataFrame":
    """``raw/users``: every user of the log, profile unknown."""
    from pyspark.sql import functions as F

    return log.select("user_id").distinct().select(
        "user_id", F.lit(None).cast("int").alias("age_level"), F.lit(None).cast("string").alias("gender"),
        F.lit(None).cast("int").alias("city_level"))


def _uniform(seed: int, *cols: "Column") -> "Column":
    """A deterministic uniform draw in [0, 1) per row, 53-bit resolution."""
    from pyspark.sql import functions as F

    return (F.pmod(F.xxhash64(F.lit(seed), *cols), F.lit(_SPACE)) / F.lit(float(_SPACE))).cast("double")


def _day_start(day: "Column") -> "Column":
    from pyspark.sql import functions as F

    return F.to_timestamp(F.concat(day, F.lit(" 00:00:00")), "yyyy-MM-dd HH:mm:ss")


def next_day_impressions(events: "DataFrame", items: "DataFrame", days: Sequence[_dt.date],
                         s: ImportSettings) -> "DataFrame":
    """``raw/impressions``: the next-day interaction lists of ``days`` (see the module docstring).

    Args:
        events: ``raw/events`` rows (the cleaned log).
        items: ``raw/items`` rows (for the category popularity feature).
        days: the label days.

    Negatives come from the same distribution as positives: the items of ``D``'s events (every user's),
    in proportion to their events that day. Every event gets a global index ``g`` in (dt, user, time,
    item, behavior) order, so the events of ``D`` are the index range ``[lo_D, hi_D)``; a draw
    ``lo_D + floor(u * (hi_D - lo_D))`` picks one uniformly. Draws are oversampled (twice the wanted
    number, plus 8), the user's own items of ``D`` removed, repeats merged, and the first
    ``ratio * positives`` kept in draw order. (Drawing from the days *before* ``D`` instead would make
    every item first seen on ``D`` a sure positive: a negative could never be one.)
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    day_list = [d.isoformat() for d in days]
    if not day_list:
        raise PlatformError("taobao import: no label day")
    ev = events.select("user_id", "item_id", "behavior", "event_time", "dt")
    spark = ev.sparkSession
    # per-dt event counts (one row per day: bounded) -> each day's first global index
    counts = sorted((r["dt"], int(r["n"])) for r in ev.groupBy("dt").agg(F.count(F.lit(1)).alias("n")).collect())
    offset, acc = {}, 0
    for day, n in counts:
        offset[day], acc = acc, acc + n
    all_days = [d for d, _ in counts]

    def first_index(day: str) -> int:  # index of the first event on or after ``day``
        return next((offset[d] for d in all_days if d >= day), acc)

    ranges = []
    for day in day_list:
        after = (_dt.date.fromisoformat(day) + _dt.timedelta(days=1)).isoformat()
        ranges.append((day, first_index(day), first_index(after)))
    range_df = spark.createDataFrame(ranges, "dt STRING, lo BIGINT, hi BIGINT")
    offsets = spark.createDataFrame(list(offset.items()), "dt STRING, off BIGINT")
    indexed = (ev.join(F.broadcast(offsets), "dt")
               .withColumn("g", F.col("off") - 1 + F.row_number().over(
                   Window.partitionBy("dt").orderBy("user_id", "event_time", "item_id", "behavior")))
               .select("g", "item_id", "dt"))

    on_day = ev.where(F.col("dt").isin(day_list))
    positives = (on_day.groupBy("user_id", "dt", "item_id").agg(
        F.lit(1).alias("clicked"), F.max((F.col("behavior") == "cart").cast("int")).alias("carted"),
        F.max((F.col("behavior") == "buy").cast("int")).alias("bought")))
    first_seen = ev.groupBy("user_id").agg(F.min("dt").alias("_first"))
    positives = positives.join(first_seen, "user_id").where(F.col("_first") < F.col("dt")).drop("_first")
    wanted = positives.groupBy("user_id", "dt").agg((F.count(F.lit(1)) * s.ratio).alias("k"))
    draws = (wanted.join(F.broadcast(range_df), "dt").where(F.col("hi") > F.col("lo"))
             .withColumn("j", F.explode(F.sequence(F.lit(0), F.col("k") * 2 + 7)))
             .withColumn("g", F.col("lo") + F.floor(_uniform(s.seed, F.col("user_id"), F.col("dt"), F.col("j"))
                                                    * (F.col("hi") - F.col("lo"))).cast("bigint")))
    drawn = draws.join(indexed.drop("dt"), "g").select("user_id", "dt", "item_id", "j", "k")
    drawn = drawn.join(positives.select("user_id", "dt", "item_id"), ["user_id", "dt", "item_id"], "left_anti")
    first = drawn.groupBy("user_id", "dt", "item_id", "k").agg(F.min("j").alias("j"))
    order = Window.partitionBy("user_id", "dt").orderBy("j")
    negatives = (first.withColumn("_r", F.row_number().over(order)).where(F.col("_r") <= F.col("k"))
                 .select("user_id", "dt", "item_id", F.lit(0).alias("clicked"), F.lit(0).alias("carted"),
                         F.lit(0).alias("bought")))
    lists = positives.unionByName(negatives)

    # point-in-time popularity of the window before D: log1p(events of the item / of its category)
    per_day = ev.groupBy(F.col("dt").alias("_edt"), "item_id").agg(F.count(F.lit(1)).alias("_n"))
    since = F.date_format(F.date_sub(F.to_date("dt"), s.popularity_days), "yyyy-MM-dd")
    item_pop = (per_day.join(F.broadcast(range_df.select("dt")),
                             (F.col("_edt") < F.col("dt")) & (F.col("_edt") >= since))
                .groupBy("dt", "item_id").agg(F.sum("_n").alias("_item_n")))
    cat = items.select("item_id", "category_id")
    cat_pop = item_pop.join(cat, "item_id").groupBy("dt", "category_id").agg(F.sum("_item_n").alias("_cat_n"))
    out = (lists.join(item_pop, ["dt", "item_id"], "left").join(cat, "item_id", "left")
           .join(cat_pop, ["dt", "category_id"], "left"))
    rank = F.array(F.log1p(F.coalesce(F.col("_item_n"), F.lit(0)).cast("double")).cast("float"),
                   F.log1p(F.coalesce(F.col("_cat_n"), F.lit(0)).cast("double")).cast("float"))
    return out.select(
        "user_id", "item_id", F.lit(None).cast("string").alias("scene"), F.lit(None).cast("string").alias("query"),
        _day_start(F.col("dt")).alias("event_time"), rank.alias("rank_features"),
        F.col("clicked").cast("int").alias("clicked"), F.col("carted").cast("int").alias("carted"),
        F.col("bought").cast("int").alias("bought"), "dt")


def table_frames(spark: "SparkSession", path: Path, s: ImportSettings) \
        -> tuple[dict[t.TableSpec, "DataFrame"], ImportReport]:
    """Every table the log maps to, and the import's counts (the counts run Spark jobs; the frames
    are lazy)."""
    report = ImportReport()
    log = clean(read_log(spark, path), s, report).cache()
    report.events = log.count()
    report.by_behavior = {BEHAVIORS[r["behavior_type"]]: int(r["count"])
                          for r in log.groupBy("behavior_type").count().collect()}  # <= 4 rows
    events = events_frame(log).cache()
    items, multi = items_frame(log)
    items = items.cache()
    report.items_with_two_categories = multi.count()
    impressions = next_day_impressions(events, items, s.label_days(), s)
    frames = {t.EVENTS: events.repartition("dt"), t.ITEMS: items, t.USERS: users_frame(log).coalesce(1),
              t.IMPRESSIONS: impressions.repartition("dt")}
    return frames, report
