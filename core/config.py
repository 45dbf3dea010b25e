"""Closed, typed platform configuration loaded from ``conf/*.yaml``.

Every section is a frozen pydantic model that rejects unknown keys, so a misspelled key
fails at start-up with its dotted name and the file it came from. Any key can be
overridden on the command line with ``--set section.key=value`` (the value is parsed as
YAML, so ``--set training.epochs=2`` gives an int and ``--set spark.conf={}`` a mapping).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Strict):
    """How the one Spark session is built (see :func:`core.spark.get_spark`)."""

    master: str = "local[*]"
    app_name: str = "user-repr-platform"
    log_level: str = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
        return value


class DeltaConfig(_Strict):
    """Which engine reads and writes Delta tables.

    ``rs``: delta-rs (``deltalake``), the embedded default; executors write Parquet files and
    the driver commits them through delta-rs's transaction API. ``spark``: delta-spark, for
    clusters with the Delta jars on the class path.
    """

    engine: Literal["rs", "spark"] = "rs"
    storage_options: dict[str, str] = Field(default_factory=dict)


class MlflowConfig(_Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    artifact_location: str | None = "./mlartifacts"
    experiment: str = "universal-user-representations"
    registered_model: str = "dupn_user_model"
    champion_alias: str = "champion"
    # A tracking server that does not answer fails a job within about
    # (max_retries + 1) * request_timeout_s + 2^max_retries - 1 seconds (MLflow's own defaults wait minutes).
    request_timeout_s: float = Field(20.0, gt=0, description="seconds per HTTP request to the tracking server")
    max_retries: int = Field(2, ge=0, le=10, description="retries of a failed HTTP request (backoff 1, 2, 4 s)")


class InputsConfig(_Strict):
    """Shape facts about the input tables that CONTRACT.md leaves to configuration."""

    rank_features_dim: int = Field(8, ge=1, le=256)


class DemoWorldConfig(_Strict):
    """Size and seed of the synthetic world written by ``jobs/generate_demo_world.py``."""

    seed: int = 7
    start_date: _dt.date = _dt.date(2026, 11, 1)
    days: int = Field(14, ge=1)
    n_users: int = Field(20_000, ge=10)
    n_items: int = Field(50_000, ge=100)
    n_shops: int = Field(2_000, ge=10)
    n_brands: int = Field(1_000, ge=10)
    n_categories: int = Field(60, ge=4)
    n_talents: int = Field(2_000, ge=10)
    n_styles: int = Field(12, ge=2)
    queries_per_category: int = Field(5, ge=1)
    events_per_user_day: float = Field(7.0, gt=0)
    search_sessions_per_user_day: float = Field(0.25, ge=0)
    recommend_sessions_per_user_day: float = Field(0.25, ge=0)
    items_per_session: int = Field(10, ge=2)
    follow_impressions_per_user_day: float = Field(0.5, ge=0)
    shop_impressions_per_user_day: float = Field(0.4, ge=0)
    ppp_label_share_per_day: float = Field(0.15, ge=0, le=1)
    ppp_label_noise: float = Field(0.1, ge=0, le=1)
    users_per_partition: int = Field(2_000, ge=1)
    duplicate_event_share: float = Field(0.0005, ge=0, le=0.5,
                                         description="exact duplicate log rows, as real logs have")
    drift_per_day: float = Field(0.25, ge=0, le=1, description="chance a user's interest moves each day")


class HashBuckets(_Strict):
    """Bucket counts of the stable id encoding (index 0 = padding, 1 = unknown/null)."""

    item_id: int = Field(1 << 18, ge=4)
    shop_id: int = Field(1 << 14, ge=4)
    brand_id: int = Field(1 << 13, ge=4)
    category_id: int = Field(1 << 11, ge=4)
    tag: int = Field(1 << 10, ge=4)
    query_token: int = Field(1 << 13, ge=4)
    talent_id: int = Field(1 << 14, ge=4)
    # talent_category_id is hashed with category_id's salt and buckets: a talent's category and an
    # item's category share one index space (and one embedding table), so "the user's history is in
    # the talent's category" is a direct match for the model, not a mapping to learn.


class SequencesConfig(_Strict):
    lookback_days: int = Field(30, ge=1)
    max_len: int = Field(100, ge=1)
    max_tags: int = Field(4, ge=1)
    max_query_tokens: int = Field(4, ge=1)
    # Upper edges in seconds of the age buckets; ages above the last edge go to "older".
    time_bucket_edges_s: list[int] = Field(
        default_factory=lambda: [60, 300, 1800, 3600, 86400, 259200, 604800])
    hash_buckets: HashBuckets = Field(default_factory=HashBuckets)

    @field_validator("time_bucket_edges_s")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= 0:
            raise ValueError("must be a non-empty list of strictly increasing positive seconds")
        return edges


class QualityConfig(_Strict):
    max_quarantine_share: float = Field(0.01, ge=0, le=1)


class StatsConfig(_Strict):
    drift_threshold: float = Field(0.65, gt=0)


class TaskSampling(_Strict):
    """Sampling of one task's training split (validation and test are never sampled).

    For ``ctr`` the unit is the impression: negatives are kept with ``negative_rate`` and
    positives weighted ``positive_upsample`` times; the model's CTR logit is corrected by
    ``log(negative_rate / positive_upsample)`` at prediction time, so ``ctr_prob`` stays a
    probability. For ``l2r`` the unit is the impression list (``negative_rate`` = share of lists
    kept). ``cap_per_user_day`` counts example groups (lists, follow impressions, labels).
    """

    enabled: bool = True
    negative_rate: float = Field(1.0, gt=0, le=1)
    positive_upsample: int = Field(1, ge=1)
    cap_per_user_day: int = Field(10_000, ge=1)


class TrainingSetConfig(_Strict):
    """How ``build_training_set`` splits and samples examples (the evaluation protocol, ``core/protocol.py``).

    Days of a range: the last ``test_days`` are the test split, the ``validation_days`` before
    them the validation split, the rest the training split. Purchasing-power labels are
    per-user constants, so they are also split by user: the labels of a hash share
    ``ppp_validation_user_share`` / ``ppp_test_user_share`` of users never reach training and
    score the validation / test splits ("unseen users"). ``group_size``: impressions of one
    list (one user at one instant) per row; longer lists take several rows. ``l2r_lists``: which
    lists with a click train and score the ranking task: ``search`` (scene ``search`` with a query,
    the paper's setting) or ``all`` (every list, e.g. the next-day lists of a log without searches).
    """

    validation_days: int = Field(1, ge=1)
    test_days: int = Field(1, ge=1)
    ppp_validation_user_share: float = Field(0.1, ge=0, lt=1)
    ppp_test_user_share: float = Field(0.2, gt=0, lt=1)
    group_size: int = Field(10, ge=1, le=512)
    l2r_lists: Literal["search", "all"] = "search"
    ctr: TaskSampling = Field(default_factory=TaskSampling)
    l2r: TaskSampling = Field(default_factory=TaskSampling)
    follow: TaskSampling = Field(default_factory=TaskSampling)
    ppp: TaskSampling = Field(default_factory=lambda: TaskSampling(cap_per_user_day=1))
    seed: int = 11

    @model_validator(mode="after")
    def _shares(self) -> "TrainingSetConfig":
        if self.ppp_validation_user_share + self.ppp_test_user_share >= 0.9:
            raise ValueError("ppp_validation_user_share + ppp_test_user_share must leave at least 10% of users "
                             "for training")
        return self


ModelFamily = Literal["dupn", "wide", "wide_deep", "dssm", "cnn_max"]


class ModelConfig(_Strict):
    """Model family, sizes (DUPN: the paper's) and the multi-task design on top of the representation.

    ``family``: ``dupn`` (the platform's model) or one of the baselines of the comparison
    benchmark (``training/baselines.py``): ``wide`` (logistic regression on one-hot and crossed
    features), ``wide_deep``, ``dssm`` (user tower over profile and a bag of past items, item and
    talent towers, cosine scores), ``cnn_max`` (convolutions over the behaviour sequence, max
    pooling, DUPN's heads).
    """

    family: ModelFamily = "dupn"
    item_dim: int = 32
    shop_dim: int = 24
    brand_dim: int = 24
    category_dim: int = 16
    tag_dim: int = 28
    behavior_dim: int = 16
    scene_dim: int = 16
    time_dim: int = 16
    query_dim: int = 32
    profile_dim: int = 8
    talent_dim: int = Field(32, ge=0, description="width of the follow head's talent-id embedding (0: the head "
                            "reads the talent's category, not its id)")
    lstm_hidden: int = 128
    attention_hidden: int = 64
    pooled_dim: int = 128
    representation_dim: int = 256
    head_hidden: int = 128
    property_in: Literal["all", "lstm", "attention", "none"] = "all"
    architecture: Literal["shared_bottom", "mmoe", "cgc", "ple", "cross_stitch"] = "shared_bottom"
    esmm: bool = True
    rank_features_in_ctr: bool = Field(True, description="CTR/CVR heads also read the impression's ranking features")
    query_in_heads: bool = Field(True, description="CTR/CVR/L2R heads also read the query vector (search)")
    attention_heads: int = Field(4, ge=1, description="attention distributions over the behaviours; each also "
                                 "pools the behaviours' interest keys into the representation")
    match_features: bool = Field(True, description="heads read the user-target match of the pooled interests")
    target_priors: bool = Field(False, description="heads also read the target's earlier-days statistics of "
                                "features/training_examples: item heads the share of the query's earlier searches "
                                "in the item's category, the follow head the talent's and the user's earlier "
                                "follow impressions and rates (features/priors.py)")
    prior_pieces: bool = Field(False, description="with target_priors (no effect without): the heads read each "
                               "prior as piecewise-linear pieces at fixed knots (counts up to a million, rates and "
                               "shares in [0, 1]) instead of its log, so one layer can learn any piecewise-linear "
                               "effect of it")
    recency_interests: int = Field(0, ge=0, description="time-decay pools of the behaviours' interest keys (a "
                                   "learned weight per age bucket, not normalised), beside the attention's: each "
                                   "adds an interest and the log of its decayed behaviour count")
    recency_by_behavior: bool = Field(False, description="each time-decay pool also learns a weight per behaviour "
                                      "type (click, fav, cart, buy), e.g. to follow recent purchases")
    purchase_pool: bool = Field(False, description="with time-decay pools: one more pool that counts purchases "
                                "only (its own learned weight per age bucket), so an interest, a decayed count and "
                                "(with the category profile) a count per category say what the user bought apart "
                                "from what they clicked")
    category_profile: int = Field(0, ge=0, description="with time-decay pools: each pool's decayed behaviour "
                                  "count per category (category index mod this many buckets) is published, and "
                                  "heads read the count in the target's own category (0 = off)")
    profile_top_share: bool = Field(False, description="with the category profile: heads also read each pool's "
                                    "decayed count in the target's category over its count in the user's top "
                                    "category there (1 when the target is the category the user acts in most)")
    price_reference: Literal["catalogue", "behaviours"] = Field(
        "catalogue", description="what a price is relative to: its category's mean log price over the item "
        "snapshot (catalogue) or over the serving users' behaviours (behaviours; features/stats.py)")
    price_match: bool = Field(False, description="item heads also read the target's relative price against the "
                              "user's mean relative price of each behaviour type (the gap and its absolute value)")
    side_inputs: int = Field(0, ge=0, description="hand-crafted per-example columns the item and follow heads also "
                             "read in the batch keys slot_side (B, G x this) and row_side (B, this): raw values of "
                             "features/hybrid_examples ranked at the spec's knots (training.hybrid sets it), or the "
                             "ranks training/side_inputs.py attaches (the comparison's hybrid rows); 0 = none")
    follow_task_input: bool = Field(True, description="the follow head reads its task input (the shared "
                                    "representation through the multi-task design); false: only the talent's "
                                    "embeddings, the match features and its priors (a diagnostic)")
    side_bins: int = Field(16, ge=2, description="with side_inputs: piecewise-linear pieces per column (knots at "
                           "equally spaced quantile ranks)")
    side_detached: bool = Field(False, description="with side_inputs (no effect without): the heads that read the "
                                "side inputs read the tower's outputs with their gradient stopped, and a second set "
                                "of heads without side inputs trains the tower, so the published vectors learn as "
                                "without side inputs while the side heads score the tasks (docs/learning.md)")
    ppp_hidden: int = Field(32, ge=0, description="hidden width of the tier head's MLP over the price features "
                                                  "(0 = the paper's linear softmax only)")
    l2r_item_score: bool = Field(True, description="the L2R score adds an MLP score of the user-item match to "
                                                   "the paper's user-weighted linear ranking score")
    num_experts: int = Field(4, ge=1)
    num_task_experts: int = Field(1, ge=1)
    expert_dim: int = 128
    ple_levels: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    cnn_channels: int = Field(128, ge=1, description="cnn_max: filters per kernel width")
    cnn_kernel_sizes: list[int] = Field(default_factory=lambda: [2, 3, 5])
    wide_buckets: int = Field(1 << 20, ge=16, description="wide / wide_deep: hashed one-hot and cross features")

    @model_validator(mode="after")
    def _pools_need_properties(self) -> "ModelConfig":
        if self.family == "dupn" and self.recency_interests and self.property_in not in ("all", "attention"):
            raise ValueError(f"recency_interests ({self.recency_interests}) pools behaviours by their properties "
                             f"(age, behaviour type), which property_in={self.property_in!r} leaves out; use "
                             f"property_in all or attention, or recency_interests: 0")
        if self.purchase_pool and not self.recency_interests:
            raise ValueError("purchase_pool adds a time-decay pool of the purchases beside the others; set "
                             "recency_interests > 0 or purchase_pool: false")
        if self.profile_top_share and not self.category_profile:
            raise ValueError("profile_top_share compares counts of the category profile; set category_profile > 0 "
                             "or profile_top_share: false")
        if self.category_profile and not self.recency_interests:
            raise ValueError(f"category_profile ({self.category_profile}) counts the time-decay pools' behaviours "
                             f"per category; set recency_interests > 0 or category_profile: 0")
        return self


class WeightingConfig(_Strict):
    """How the task losses are combined (``training/weighting.py``).

    ``uncertainty_max_log_var``: Kendall et al.'s learned log-variances are kept within
    ± this bound, so a task whose training loss shrinks (memorised) cannot take an unbounded
    weight (exp(-s) <= e^bound).
    """

    kind: Literal["fixed", "uncertainty", "gradnorm"] = "uncertainty"
    fixed: dict[str, float] = Field(default_factory=dict)
    gradnorm_alpha: float = Field(1.5, ge=0)
    gradnorm_lr: float = Field(0.025, gt=0)
    uncertainty_max_log_var: float = Field(2.0, gt=0)


class PromotionConfig(_Strict):
    """The promotion gate (``registry/models.py``): candidate and champion are scored on the same
    test examples; a paired bootstrap over users (``resamples`` draws) gives a ``confidence``
    interval of each metric's difference, and the candidate is blocked only when a metric is
    worse beyond its interval (the upper bound of candidate - champion is below zero)."""

    resamples: int = Field(400, ge=20)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0
    auto_promote: bool = True


class LRScheduleConfig(_Strict):
    """The learning rate over a run (``training/step.py:lr_factor``): ``constant`` keeps ``lr``;
    ``linear`` and ``cosine`` take it from ``lr`` (after ``warmup_steps`` of linear warm-up from 0)
    down to ``final_fraction`` x ``lr`` at the end of ``epochs`` epochs (default, and at most, the
    run's epoch cap) and hold it there."""

    kind: Literal["constant", "linear", "cosine"] = "constant"
    epochs: float | None = Field(None, gt=0, description="epochs the decay spans (default: the run's epoch cap)")
    final_fraction: float = Field(0.0, ge=0, le=1, description="lr at the end of the decay, as a share of lr")
    warmup_steps: int = Field(0, ge=0)


class EarlyStoppingConfig(_Strict):
    """Model selection on the validation split (``training/evaluation.py``'s selection score):
    the validation split is scored ``evals_per_epoch`` times per epoch; training stops after
    ``patience`` scorings without an improvement above ``min_delta``, and the best-scoring
    weights are kept."""

    evals_per_epoch: int = Field(2, ge=1)
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0005, ge=0)
    min_rows: int = Field(1000, ge=0, description="a metric scored on fewer validation rows (e.g. PPP accuracy on "
                          "a few hundred unseen users: a standard error of several points) does not steer selection, "
                          "unless no metric has that many; 0 = every metric counts")


TaskName = Literal["ctr", "l2r", "follow", "ppp"]
ALL_TASKS: tuple[TaskName, ...] = ("ctr", "l2r", "follow", "ppp")


class TrainingConfig(_Strict):
    """Training (``training/trainer.py``). ``epochs`` is the cap of a full training run, which stops
    earlier when the validation score stops improving (``early_stopping``)."""

    tasks: list[TaskName] = Field(default_factory=lambda: list(ALL_TASKS))
    model: ModelConfig = Field(default_factory=ModelConfig)
    hybrid: bool = Field(False, description="full training reads features/hybrid_examples (jobs/"
                         "build_hybrid_examples) and the item and follow heads also read its hand-crafted summaries "
                         "of the user's history (features.gbdt.SIDE_COLUMNS, ranked at the training split's "
                         "quantiles); incremental training follows its champion")
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    optimizer: Literal["adagrad", "adam", "sgd"] = "adagrad"
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    batch_size: int = Field(1024, ge=1)
    ema_decay: float = Field(0.0, ge=0, lt=1, description="validation scores, and training keeps, an exponential "
                             "moving average of the weights with this decay per step (0 = the weights themselves)")
    epochs: int = Field(2, ge=1)
    incremental_epochs: int = Field(1, ge=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    max_steps_per_epoch: int | None = None
    num_processes: int = Field(1, ge=1)
    use_distributor: bool = True
    reader_workers: int = Field(2, ge=1)
    shuffle_buffer: int = Field(8192, ge=1, description="rows (example groups) in the shuffling buffer")
    bucket_by_length: bool = Field(True, description="batch rows of similar sequence length (less padding)")
    deterministic: bool = Field(False, description="one reader thread: the same read order on every run")
    eval_batch_size: int = Field(1024, ge=1)
    progress_every_s: float = Field(10.0, gt=0)
    seed: int = 5
    torch_threads: int | None = None
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


class IndexConfig(_Strict):
    """The nearest-neighbour index the nightly job builds beside each published date
    (:mod:`features.vector_index`): ``nlist`` coarse lists (None: about sqrt(users)), ``nprobe``
    lists scanned per query by default, ``train_rows`` rows sampled to train the lists."""

    enabled: bool = True
    nlist: int | None = Field(None, ge=1)
    nprobe: int = Field(32, ge=1)
    train_rows: int = Field(65_536, ge=1)


class PublishConfig(_Strict):
    batch_size: int = Field(16384, ge=1)  # users per Arrow batch, sorted by sequence length within it
    forward_batch: int = Field(128, ge=1)  # users per forward pass of the user part
    # executors read the sequences' Parquet files and write the published ones with pyarrow when the lake
    # is local (file://); false, or a lake elsewhere: Spark reads and writes them (mapInArrow)
    from_files: bool = True
    partitions: int | None = None
    index: IndexConfig = Field(default_factory=IndexConfig)


HeadInput = Literal["full", "dense", "match"]  # transfer.head_input's values


class TransferConfig(_Strict):
    """``jobs/transfer.py``: users split by hash into train / validation / test; each method's
    epoch is chosen on validation and the test split is scored once with it."""

    validation_share: float = Field(0.15, gt=0, lt=1)
    test_share: float = Field(0.3, gt=0, lt=1)
    epochs: int = Field(3, ge=1, description="each method's cap on passes over the training split")
    patience: int = Field(0, ge=0, description="a method stops after this many epochs without a better validation "
                          "AUC (0 = it trains every epoch of the cap)")
    batch_size: int = Field(512, ge=1)
    lr: float = Field(0.005, gt=0)
    rt_lr: float | None = Field(None, gt=0, description="RT's learning rate (default lr): a shallow head on a "
                                "frozen vector, whose best epoch a coarse lr leaves to chance")
    rt_epochs: int | None = Field(None, ge=1, description="RT's cap on passes (default epochs); an RT epoch takes "
                                  "under a second on the demo world")
    ft_tower_lr_scale: float = Field(1.0, gt=0, le=1, description="FT: the pre-trained user tower learns at this "
                                     "fraction of lr, the new shop head at lr (discriminative fine-tuning)")
    price_match: bool = Field(False, description="the shop head also reads the shop's relative price minus the "
                              "user's mean of each behaviour type (the item heads' model.price_match)")
    head_input: HeadInput = Field(
        "full", description="what of the user representation the shop head's MLP reads beside the match features: "
        "full = every column, dense = the dense part (a DUPN vector's first model.representation_dim columns, not "
        "its interests, prices and category profile), match = none (the shop features and the match features only)")
    seed: int = 3
    days: int = Field(2, ge=1)
    ra_mix: int = Field(4, ge=1)


class TabularTask(_Strict):
    """One label of a tabular table: ``binary`` (1 when the column's value is ``positive``) or
    ``multiclass`` (the index of the value in ``classes``). A value outside ``classes`` is an error."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    column: str
    kind: Literal["binary", "multiclass"] = "binary"
    classes: list[str] = Field(min_length=2, description="every value the column may hold, as text")
    positive: str | None = Field(None, description="binary: the value that is the positive class")

    @model_validator(mode="after")
    def _positive_is_a_class(self) -> "TabularTask":
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task {self.name}: classes repeat a value")
        if self.kind == "binary":
            if len(self.classes) < 2 or self.positive is None or self.positive not in self.classes:
                raise ValueError(f"task {self.name}: a binary task names its positive value, one of its classes")
        elif self.positive is not None:
            raise ValueError(f"task {self.name}: positive is for binary tasks only")
        return self

    @property
    def n_outputs(self) -> int:
        """1 logit (binary) or one per class."""
        return 1 if self.kind == "binary" else len(self.classes)


class TabularSplit(_Strict):
    """How the rows are split. ``permutation``: ``numpy.random.default_rng(seed).permutation(n)`` over
    the rows in ``id_column`` order (which must be 0..n-1; the driver holds n integers): test = its first
    n * test_frac rows, validation the next n * valid_frac, training the rest. ``hash``: a row's split
    from a hash of its id and the seed (any ids, any size)."""

    method: Literal["permutation", "hash"] = "permutation"
    seed: int = 2026
    test_frac: float = Field(0.2, gt=0, lt=1)
    valid_frac: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training(self) -> "TabularSplit":
        if self.test_frac + self.valid_frac >= 1:
            raise ValueError("test_frac + valid_frac must leave rows for training")
        return self


class TabularConfig(_Strict):
    """Multi-task training on an ordinary feature table (``jobs/build_tabular_set.py``,
    ``jobs/train_tabular.py``): its categorical and dense columns, its labels and the model's sizes.
    The multi-task design, weighting, optimiser and early stopping are ``training``'s."""

    name: str = Field("census", pattern=r"^[a-z][a-z0-9_]*$", description="names the encoded table "
                      "features/tabular_<name>")
    table: str = Field("raw/census_income", description="the source Delta table, relative to lake_root")
    id_column: str = "row_id"
    categorical: list[str] = Field(default_factory=list)
    dense: list[str] = Field(default_factory=list)
    dense_log: list[str] = Field(default_factory=list, description="dense columns taken as sign(x) log(1 + |x|) "
                                 "before standardisation (heavy-tailed amounts)")
    tasks: list[TabularTask] = Field(default_factory=list)
    split: TabularSplit = Field(default_factory=TabularSplit)
    max_vocab: int = Field(10_000, ge=1, description="most frequent training values kept per categorical column")
    min_count: int = Field(1, ge=1, description="training rows a value needs to get its own embedding")
    dense_bins: int = Field(0, ge=0, le=65_536, description="0, or quantile bins per dense column fitted on the "
                            "training split: the model then also takes each dense value's piecewise-linear encoding "
                            "over its column's bins (Gorishniy et al. 2022), so an MLP can shape a non-monotone effect")
    embedding_dim: int = Field(8, ge=1)
    bottom_hidden: list[int] = Field(default_factory=lambda: [256, 128], description="shared_bottom: the shared "
                                     "MLP; the other designs put their experts on the embedded input")
    tower_hidden: list[int] = Field(default_factory=lambda: [64], description="each task's tower MLP")

    @model_validator(mode="after")
    def _columns(self) -> "TabularConfig":
        declared = self.categorical + self.dense
        if len(set(declared)) != len(declared):
            raise ValueError("a column is declared twice among categorical and dense")
        if self.dense_bins == 1:
            raise ValueError("dense_bins must be 0 (off) or at least 2")
        stray = [c for c in self.dense_log if c not in self.dense]
        if stray:
            raise ValueError(f"dense_log names columns that are not dense: {stray}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("two tasks share a name")
        leaks = [t.column for t in self.tasks if t.column in declared]
        if leaks:
            raise ValueError(f"label columns are also declared as inputs: {leaks}")
        return self


DailyStep = Literal["sequences", "training_set", "feature_stats", "train", "publish"]
DAILY_STEPS: tuple[DailyStep, ...] = ("sequences", "training_set", "feature_stats", "train", "publish")


class DailyConfig(_Strict):
    """``jobs/daily.py``: which steps a day runs (always in the order of ``DAILY_STEPS``) and the
    training set it builds (``core/daily.py``).

    ``steps``: e.g. ``[sequences, feature_stats, publish]`` for a day that only publishes with the
    current champion. ``training_days``: training-split days in the range the ``training_set`` step
    builds for day D; the range ends with D (the test day of the gate) and holds
    ``training_set.validation_days`` validation days before it, so it is
    ``training_days + validation_days + test_days`` days long and replaces exactly those partitions.
    """

    steps: list[DailyStep] = Field(default_factory=lambda: list(DAILY_STEPS))
    training_days: int = Field(1, ge=1)

    @field_validator("steps")
    @classmethod
    def _ordered(cls, steps: list[DailyStep]) -> list[DailyStep]:
        if not steps:
            raise ValueError(f"must name at least one step of {list(DAILY_STEPS)}")
        if len(set(steps)) != len(steps):
            raise ValueError("names a step twice")
        if steps != sorted(steps, key=DAILY_STEPS.index):
            raise ValueError(f"steps run in the order {list(DAILY_STEPS)}; list them in that order")
        return steps


class Config(_Strict):
    """The whole platform configuration (one YAML file plus ``--set`` overrides)."""

    lake_root: str = "./lake"
    spark: SparkConfig = Field(default_factory=SparkConfig)
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    demo: DemoWorldConfig = Field(default_factory=DemoWorldConfig)
    sequences: SequencesConfig = Field(default_factory=SequencesConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    training_set: TrainingSetConfig = Field(default_factory=TrainingSetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    tabular: TabularConfig = Field(default_factory=TabularConfig)
    daily: DailyConfig = Field(default_factory=DailyConfig)
    source: str = Field("<defaults>", exclude=True, description="file the config came from")

    @model_validator(mode="after")
    def _lake_root_not_empty(self) -> "Config":
        if not self.lake_root.strip():
            raise ValueError("lake_root must not be empty")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain YAML-able data (logged with every run)."""
        return self.model_dump(mode="json")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]`` with YAML-typed values."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. training.batch_size=512), got '{item}'")
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out


def _spark_conf_override(key: str) -> bool:
    return key.startswith("spark.conf.")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load and validate a config file, applying ``key=value`` overrides.

    Args:
        path: a YAML file; ``None`` gives the built-in defaults (the embedded default).
        overrides: ``section.key=value`` strings, applied in order after the file.

    Raises:
        ConfigError: one line naming the file and the offending key.
    """
    source = str(path) if path is not None else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {source} not found (pass --config conf/local.yaml)")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        tree = loaded
    for key, value in parse_overrides(overrides):
        if _spark_conf_override(key):
            # Spark keys contain dots themselves: spark.conf.spark.sql.shuffle.partitions=4
            tree.setdefault("spark", {}).setdefault("conf", {})[key[len("spark.conf."):]] = value
        else:
            _set_dotted(tree, key, value)
    try:
        return Config.model_validate({**tree, "source": source})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None


def _one_line(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
    return f"config {source}: " + "; ".join(parts)
