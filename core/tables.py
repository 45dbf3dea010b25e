"""Every table of the lake, each schema defined once and used both to write and to validate.

The ``raw/*`` and ``outputs/*`` schemas are CONTRACT.md's; the ``features/*``,
``quarantine/*`` and ``raw/_truth/*`` tables are the platform's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from pyspark.sql import types as T

from core.errors import SchemaError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _f(name: str, dtype: T.DataType, nullable: bool = True) -> T.StructField:
    return T.StructField(name, dtype, nullable)


LONG, INT, STR, DBL, FLT, TS = T.LongType(), T.IntegerType(), T.StringType(), T.DoubleType(), T.FloatType(), \
    T.TimestampType()
INTS, FLOATS, STRS = T.ArrayType(T.IntegerType()), T.ArrayType(T.FloatType()), T.ArrayType(T.StringType())


@dataclass(frozen=True)
class TableSpec:
    """A Delta table of the lake: its path under the lake root, schema and partitioning."""

    name: str
    schema: T.StructType
    partition_by: tuple[str, ...] = ()
    description: str = ""
    # Columns that may be absent from an input table without failing (none for contract tables).
    optional: tuple[str, ...] = field(default=())
    # A column point lookups filter on: writes sort each file by it, so with row groups of at most
    # row_group_bytes a lookup reads the few row groups whose range holds the value.
    lookup_key: str = ""
    # The Parquet row-group size writes aim for (0: Spark's default, 128 MB). A reader that takes whole
    # row groups (Petastorm) holds a few of them decoded at once, so a table it reads bounds them.
    row_group_bytes: int = 0

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]

    @property
    def required_non_null(self) -> list[str]:
        return [f.name for f in self.schema.fields if not f.nullable]

    def validate(self, actual: T.StructType) -> None:
        """Check ``actual`` (a table's or DataFrame's schema) against this contract.

        Raises:
            SchemaError: one line naming the table, the column, expected and found type.
        """
        found = {f.name: f.dataType for f in actual.fields}
        for expected in self.schema.fields:
            if expected.name not in found:
                if expected.name in self.optional:
                    continue
                raise SchemaError(
                    f"table {self.name}: missing column '{expected.name}' "
                    f"(expected {expected.dataType.simpleString()}); fix the writer of {self.name} "
                    f"to produce it as its contract specifies")
            got = found[expected.name]
            if not _compatible(expected.dataType, got):
                raise SchemaError(
                    f"table {self.name}: column '{expected.name}' has type {got.simpleString()}, "
                    f"expected {expected.dataType.simpleString()}; cast it in the writer of {self.name}")

    def conform(self, df: "DataFrame") -> "DataFrame":
        """Select this table's columns in order, cast to the declared types."""
        from pyspark.sql import functions as F

        self.validate(df.schema)
        present = set(df.columns)
        return df.select([
            (F.col(f.name) if f.name in present else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in self.schema.fields])


def _compatible(expected: T.DataType, got: T.DataType) -> bool:
    """Same type, ignoring nullability; a timestamp without zone is accepted for a timestamp."""
    if isinstance(expected, T.ArrayType) and isinstance(got, T.ArrayType):
        return _compatible(expected.elementType, got.elementType)
    if isinstance(expected, T.TimestampType) and isinstance(got, T.TimestampNTZType):
        return True
    return type(expected) is type(got)


# ---------------------------------------------------------------- input tables (CONTRACT.md)
EVENTS = TableSpec("raw/events", T.StructType([
    _f("user_id", LONG, False), _f("item_id", LONG, False), _f("behavior", STR, False), _f("scene", STR),
    _f("query", STR), _f("event_time", TS, False), _f("dt", STR, False)]), ("dt",),
    "user behaviour log")
ITEMS = TableSpec("raw/items", T.StructType([
    _f("item_id", LONG, False), _f("shop_id", LONG), _f("brand_id", LONG), _f("category_id", LONG),
    _f("tags", STRS), _f("price", DBL)]), (), "item dimension, latest snapshot")
USERS = TableSpec("raw/users", T.StructType([
    _f("user_id", LONG, False), _f("age_level", INT), _f("gender", STR), _f("city_level", INT)]), (),
    "user profile, latest snapshot")
IMPRESSIONS = TableSpec("raw/impressions", T.StructType([
    _f("user_id", LONG, False), _f("item_id", LONG, False), _f("scene", STR), _f("query", STR),
    _f("event_time", TS, False), _f("rank_features", FLOATS, False), _f("clicked", INT, False),
    _f("carted", INT, False), _f("bought", INT, False), _f("dt", STR, False)]), ("dt",),
    "search and recommendation impressions (CTR, L2R, ESMM)")
FOLLOWS = TableSpec("raw/follows", T.StructType([
    _f("user_id", LONG, False), _f("talent_id", LONG, False), _f("talent_category_id", LONG),
    _f("event_time", TS, False), _f("followed", INT, False), _f("dt", STR, False)]), ("dt",),
    "talent follow impressions")
PPP_LABELS = TableSpec("raw/ppp_labels", T.StructType([
    _f("user_id", LONG, False), _f("tier", INT, False), _f("dt", STR, False)]), ("dt",),
    "purchasing-power tier labels 1..7 (as of the end of dt)")
SHOP_PREFS = TableSpec("raw/shop_prefs", T.StructType([
    _f("user_id", LONG, False), _f("shop_id", LONG, False), _f("event_time", TS, False),
    _f("label", INT, False), _f("dt", STR, False)]), ("dt",),
    "downstream transfer task: shop preference")

RAW_TABLES: tuple[TableSpec, ...] = (EVENTS, ITEMS, USERS, IMPRESSIONS, FOLLOWS, PPP_LABELS, SHOP_PREFS)
LABEL_TABLES: dict[str, TableSpec] = {
    "impressions": IMPRESSIONS, "follows": FOLLOWS, "ppp_labels": PPP_LABELS, "shop_prefs": SHOP_PREFS}

# ---------------------------------------------------------------- ground truth of the demo world
TRUTH_USERS = TableSpec("raw/_truth/users", T.StructType([
    _f("user_id", LONG, False), _f("tier", INT, False), _f("activity", DBL, False),
    _f("top_categories", T.ArrayType(LONG), False), _f("top_weights", FLOATS, False)]), (),
    "latent tier and initial category interests of each demo user")
TRUTH_INTERESTS = TableSpec("raw/_truth/interests", T.StructType([
    _f("user_id", LONG, False), _f("top_categories", T.ArrayType(LONG), False),
    _f("top_weights", FLOATS, False), _f("dt", STR, False)]), ("dt",),
    "each demo user's drifting category interests (top 5) per day")
TRUTH_IMPRESSIONS = TableSpec("raw/_truth/impressions", T.StructType([
    _f("user_id", LONG, False), _f("item_id", LONG, False), _f("event_time", TS, False),
    _f("p_click", DBL, False), _f("p_cart_given_click", DBL, False), _f("p_buy_given_click", DBL, False),
    _f("clicked", INT, False), _f("bought", INT, False), _f("dt", STR, False)]), ("dt",),
    "oracle probabilities of every impression label")
TRUTH_FOLLOWS = TableSpec("raw/_truth/follows", T.StructType([
    _f("user_id", LONG, False), _f("talent_id", LONG, False), _f("event_time", TS, False),
    _f("p_follow", DBL, False), _f("followed", INT, False), _f("dt", STR, False)]), ("dt",),
    "oracle probability of every follow label")
TRUTH_SHOP_PREFS = TableSpec("raw/_truth/shop_prefs", T.StructType([
    _f("user_id", LONG, False), _f("shop_id", LONG, False), _f("event_time", TS, False),
    _f("p_label", DBL, False), _f("label", INT, False), _f("dt", STR, False)]), ("dt",),
    "oracle probability of every shop-preference label")
TRUTH_TABLES = (TRUTH_USERS, TRUTH_INTERESTS, TRUTH_IMPRESSIONS, TRUTH_FOLLOWS, TRUTH_SHOP_PREFS)

# ---------------------------------------------------------------- published table (CONTRACT.md)
USER_REPRESENTATIONS = TableSpec("outputs/user_representations", T.StructType([
    _f("user_id", LONG, False), _f("embedding", FLOATS, False), _f("ppp_tier", INT, False),
    _f("ppp_probs", FLOATS, False), _f("model_name", STR, False), _f("model_version", STR, False),
    _f("dt", STR, False)]), ("dt",), "nightly universal user representations", lookup_key="user_id",
    row_group_bytes=4 << 20)


def by_name(name: str, specs: Iterable[TableSpec] = RAW_TABLES + TRUTH_TABLES + (USER_REPRESENTATIONS,)) \
        -> TableSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(name)


# ---------------------------------------------------------------- platform feature tables
# Fixed-length arrays (padded with 0) so Petastorm's batch reader can stack them:
# seq_* have length sequences.max_len (L); seq_tags L*max_tags; query_tokens max_query_tokens;
# item_tags max_tags; rank_features inputs.rank_features_dim; user_dense USER_DENSE_DIM.
USER_DENSE_FEATURES = ("log_seq_len", "deep_share", "log_distinct_categories", "mean_log_price")
USER_DENSE_DIM = len(USER_DENSE_FEATURES)

_USER_COLUMNS = [
    _f("user_id", LONG, False), _f("seq_len", INT, False),
    _f("seq_item", INTS, False), _f("seq_shop", INTS, False), _f("seq_brand", INTS, False),
    _f("seq_category", INTS, False), _f("seq_tags", INTS, False), _f("seq_behavior", INTS, False),
    _f("seq_scene", INTS, False), _f("seq_time_bucket", INTS, False), _f("seq_log_price", FLOATS, False),
    _f("user_age", INT, False), _f("user_gender", INT, False), _f("user_city", INT, False),
    _f("user_dense", FLOATS, False)]

USER_SEQUENCES = TableSpec("features/user_sequences", T.StructType(
    _USER_COLUMNS + [_f("snapshot_time", TS, False), _f("dt", STR, False)]), ("dt",),
    "latest behaviours of every user active in the look-back window, as of the end of dt (encoded)")

# The incremental build's state (features.pipeline): per user the latest max_len valid behaviours in the
# look-back window ending with dt, unencoded ids and event times (the published table holds hashed ids and no
# times, so it alone can neither order new behaviours among old ones nor re-join item attributes).
# (struct fields nullable like other array elements here: Spark does not cast a nullable field to a non-null one)
STATE_EVENT = T.StructType([_f("event_time", TS), _f("item_id", LONG), _f("behavior", INT), _f("scene", INT)])
USER_SEQUENCE_STATE = TableSpec("features/user_sequence_state", T.StructType([
    _f("user_id", LONG, False), _f("events", T.ArrayType(STATE_EVENT), False), _f("dt", STR, False)]), ("dt",),
    "per user the latest sequences.max_len valid behaviours (event_time, item_id, behavior and scene indices) "
    "in the look-back window ending with dt, oldest first: the state build_sequences advances by one day")

TASKS = ("ctr", "l2r", "follow", "ppp")
TASK_IDS = {name: i for i, name in enumerate(TASKS)}
# What one row of features/training_examples holds: an impression list (ctr and, for search lists
# with a click, l2r examples), one talent follow impression, or one purchasing-power label.
KINDS = ("impressions", "follow", "ppp")
KIND_IDS = {name: i for i, name in enumerate(KINDS)}
KIND_OF_TASK = {"ctr": "impressions", "l2r": "impressions", "follow": "follow", "ppp": "ppp"}

# Columns of one impression slot (arrays of length G = training_set.group_size; item_tags G*max_tags,
# rank_features G*rank_dim, row-major). Slots past n_items are padding (index 0, value 0, weight 0).
# item_query_share: the share of the list's query's earlier searches in the slot item's category
# (features/priors.py; 0 when the list has no query).
SLOT_COLUMNS = ("example_id", "item", "item_shop", "item_brand", "item_category", "item_tags", "item_log_price",
                "item_query_share", "rank_features", "label_click", "label_cart", "label_buy", "ctr_weight",
                "l2r_gain")

TRAINING_EXAMPLES = TableSpec("features/training_examples", T.StructType(
    [_f("group_id", LONG, False), _f("list_id", LONG, False), _f("kind", STR, False), _f("kind_id", INT, False),
     _f("split", STR, False), _f("event_time", TS, False)]
    + _USER_COLUMNS
    + [_f("query_tokens", INTS, False), _f("n_items", INT, False),
       _f("example_id", T.ArrayType(LONG), False),
       _f("item", INTS, False), _f("item_shop", INTS, False), _f("item_brand", INTS, False),
       _f("item_category", INTS, False), _f("item_tags", INTS, False), _f("item_log_price", FLOATS, False),
       _f("item_query_share", FLOATS, False), _f("rank_features", FLOATS, False), _f("label_click", FLOATS, False),
       _f("label_cart", FLOATS, False),
       _f("label_buy", FLOATS, False), _f("ctr_weight", FLOATS, False), _f("l2r", INT, False),
       _f("l2r_gain", FLOATS, False),
       _f("talent", INT, False), _f("talent_category", INT, False),
       # features.priors.TALENT_PRIOR of a follow row (the talent's and the user's earlier follows); zeros elsewhere
       _f("talent_prior", FLOATS, False), _f("label_follow", FLT, False),
       _f("follow_weight", FLT, False), _f("label_tier", INT, False), _f("ppp_user", INT, False),
       _f("dt", STR, False)]), ("dt",),
    "point-in-time multi-task training examples, one row per example group: one user at one instant with "
    "its behaviour sequence encoded once (an impression list, a follow impression or a tier label)",
    # Petastorm decodes a row group whole; with Spark's default a training driver grew with the data
    # (benchmarks/results/scale.md: 1.0 GB at 2M events, 2.7 GB at 20M, where row groups were 27 MB)
    row_group_bytes=4 << 20)

# The training examples with the hand-crafted summaries of features/gbdt.py beside them (features/hybrid.py,
# jobs/build_hybrid_examples.py): what training reads when training.hybrid is on. slot_side holds the C columns
# of every impression slot (G * C, row-major; NaN where a value is missing and in every slot of a row that is
# not an impression list), row_side those of a follow row (C; NaN in other rows). The commit metadata names
# the C columns and their knots (quantiles of the training split).
HYBRID_EXAMPLES = TableSpec(
    "features/hybrid_examples",
    T.StructType([*TRAINING_EXAMPLES.schema.fields[:-1], _f("slot_side", FLOATS, False), _f("row_side", FLOATS, False),
                  TRAINING_EXAMPLES.schema.fields[-1]]), ("dt",),
    "the training examples of one build with the hand-crafted point-in-time summaries of each impression slot "
    "and follow row (the hybrid model's side inputs)",
    row_group_bytes=TRAINING_EXAMPLES.row_group_bytes)

# the job that builds each examples table (named in the errors of whatever reads them)
BUILT_BY = {TRAINING_EXAMPLES.name: "build_training_set", HYBRID_EXAMPLES.name: "build_hybrid_examples"}

FEATURE_STATS = TableSpec("features/feature_stats", T.StructType([
    _f("feature", STR, False), _f("population", STR, False), _f("count", LONG, False),
    _f("mean", DBL, False), _f("var", DBL, False), _f("dt", STR, False)]), ("dt",),
    "normalisation statistics of every dense model input over the serving population of dt")

# ---------------------------------------------------------------- operations
DAILY_RUNS = TableSpec("ops/daily_runs", T.StructType([
    _f("run_id", STR, False), _f("step", STR, False), _f("status", STR, False), _f("started_at", TS),
    _f("seconds", DBL), _f("output_table", STR), _f("output_version", LONG), _f("output", STR),
    _f("fingerprint", STR), _f("details", STR), _f("message", STR), _f("command", STR),
    _f("dt", STR, False)]), ("dt",),
    "jobs/daily.py's run log: one row per step of a day's run (status ran / skipped / failed / not run, seconds, "
    "output version, the fingerprint of the step's inputs, the details as JSON, the command that runs the step alone)")
