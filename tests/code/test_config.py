from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load() -> None:
    local = load_config(ROOT / "conf" / "local.yaml")
    assert local.spark.master == "local[*]"
    assert local.delta.engine == "rs"
    assert local.mlflow.tracking_uri.startswith("sqlite:")
    assert local.lake_root == "./lake"
    # the platform's model: DUPN whose side heads read the hand-crafted summaries and the priors as pieces and
    # leave the tower (and so the published vectors) to the heads without them
    model = local.training.model
    assert local.training.hybrid and model.side_detached and model.prior_pieces and model.target_priors
    cluster = load_config(ROOT / "conf" / "cluster.example.yaml")
    assert cluster.delta.engine == "spark"
    assert cluster.lake_root.startswith("s3a://")
    assert "io.delta:delta-spark" in cluster.spark.conf["spark.jars.packages"]
    assert cluster.spark.master in ("yarn",) or cluster.spark.master.startswith("k8s://")


@pytest.mark.reliability(
    "config",
    "an unknown key in the config file",
    "one line naming the key and the file")
def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batchsize: 12\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "training.batchsize" in msg and str(bad) in msg and "\n" not in msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainig: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'trainig'"):
        load_config(bad)


def test_override_is_typed_and_applied() -> None:
    cfg = load_config(ROOT / "conf" / "local.yaml", ["training.batch_size=512", "delta.engine=spark",
                                                     "spark.conf.spark.sql.shuffle.partitions=3"])
    assert cfg.training.batch_size == 512
    assert cfg.delta.engine == "spark"
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"


@pytest.mark.reliability(
    "config",
    "--set with an unknown key or a value of the wrong type",
    "one line naming the key")
def test_override_unknown_or_bad_value() -> None:
    with pytest.raises(ConfigError, match="unknown key 'training.batch_sise'"):
        load_config(ROOT / "conf" / "local.yaml", ["training.batch_sise=512"])
    with pytest.raises(ConfigError, match="'training.batch_size'"):
        load_config(ROOT / "conf" / "local.yaml", ["training.batch_size=lots"])
    with pytest.raises(ConfigError, match="'delta.engine'"):
        load_config(ROOT / "conf" / "local.yaml", ["delta.engine=duckdb"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(ROOT / "conf" / "local.yaml", ["training.batch_size"])
    with pytest.raises(ConfigError, match="dense_bins must be 0 .off. or at least 2"):
        load_config(ROOT / "conf" / "census.yaml", ["tabular.dense_bins=1"])
    with pytest.raises(ConfigError, match="'tabular.dense_bins'"):
        load_config(ROOT / "conf" / "census.yaml", ["tabular.dense_bins=100000"])
    with pytest.raises(ConfigError, match="recency_interests.*property_in='none'"):
        load_config(ROOT / "conf" / "local.yaml", ["training.model.recency_interests=2",
                                                   "training.model.property_in=none"])


@pytest.mark.reliability(
    "config",
    "a missing config file, invalid YAML",
    "one line naming the file")
def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.training.batch_size = 3


def test_time_bucket_edges_validated() -> None:
    with pytest.raises(ConfigError, match="time_bucket_edges_s"):
        load_config(None, ["sequences.time_bucket_edges_s=[60, 30]"])


def test_protocol_and_promotion_settings_are_validated() -> None:
    cfg = load_config(ROOT / "conf" / "local.yaml")
    assert (cfg.training_set.validation_days, cfg.training_set.test_days) == (1, 1)
    assert cfg.training.promotion.resamples >= 20 and 0.5 < cfg.training.promotion.confidence < 1
    with pytest.raises(ConfigError, match=r"ppp_validation_user_share \+ ppp_test_user_share must leave"):
        load_config(None, ["training_set.ppp_validation_user_share=0.5", "training_set.ppp_test_user_share=0.4"])
    with pytest.raises(ConfigError, match="'training_set.validation_days'"):
        load_config(None, ["training_set.validation_days=0"])
    with pytest.raises(ConfigError, match="'training.promotion.confidence'"):
        load_config(None, ["training.promotion.confidence=1.5"])
    # the gate is a bootstrap interval now, not a fixed tolerance
    with pytest.raises(ConfigError, match="unknown key 'training.promotion.tolerance'"):
        load_config(None, ["training.promotion.tolerance=0.01"])
