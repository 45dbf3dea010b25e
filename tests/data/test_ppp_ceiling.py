"""The Bayes tier classifier of features/ppp_ceiling.py: its pieces are the generator's, and on a
world it reads the tier from behaviour far better than the prior and below the oracle."""
from __future__ import annotations

import numpy as np
import pytest

from core import tables as t
from features.demo_world import BEHAVIOR_SIGMA, TIER_P, Catalogue
from features.ppp_ceiling import (ceiling_scores, item_tier_likelihoods, label_given_tier, level_log_likelihoods,
                                  posterior_labels, profile_log_likelihoods)


def test_level_likelihoods_are_distributions_over_levels(tiny_world) -> None:
    cfg, _ = tiny_world
    ll = level_log_likelihoods(Catalogue.build(cfg.demo))
    assert ll.shape == (cfg.demo.n_categories, len(BEHAVIOR_SIGMA), 7, 7)
    np.testing.assert_allclose(np.exp(ll).sum(axis=2), 1.0, atol=1e-9)


def test_without_the_catalogue_every_category_is_alike(tiny_world) -> None:
    cfg, _ = tiny_world
    cat = Catalogue.build(cfg.demo)
    flat = level_log_likelihoods(cat, catalogue=False)
    np.testing.assert_allclose(flat, np.broadcast_to(flat[:1], flat.shape))
    assert not np.allclose(level_log_likelihoods(cat), flat)  # the catalogue's levels differ by category


def test_a_buy_says_more_than_a_click() -> None:
    # a uniform catalogue: the likelihood ratio between the right tier and a far one grows as σ shrinks
    cat = Catalogue.__new__(Catalogue)
    cat.seg_mass = np.ones((1, 7))
    ll = level_log_likelihoods(cat)[0]  # (b, level, tier)
    level = 4 - 1
    ratios = [ll[b, level, 3] - ll[b, level, 0] for b in range(4)]
    assert ratios == sorted(ratios)  # click < fav < cart < buy
    assert ratios[3] > 10 * ratios[0]


def test_profile_tables_are_distributions() -> None:
    city, age = profile_log_likelihoods()
    for table in (city, age):
        np.testing.assert_allclose(np.exp(np.stack(table["ll"].to_numpy())).sum(axis=0), 1.0, atol=1e-9)
    # a higher tier lives in a lower city level (features/demo_world.py)
    ll = np.stack(city["ll"].to_numpy())
    assert ll[0].argmax() == 6 and ll[-1].argmax() == 0


def test_label_noise_and_prediction() -> None:
    m = label_given_tier(0.1)
    np.testing.assert_allclose(m.sum(axis=0), 1.0)
    assert m[0, 0] == pytest.approx(0.95) and m[3, 3] == pytest.approx(0.9) and m[2, 3] == pytest.approx(0.05)
    # a sharp posterior on tier 5 predicts 5; a flat one predicts the prior's mode (tier 4)
    sharp = np.full((1, 7), -50.0)
    sharp[0, 4] = 0.0
    flat = np.log(np.asarray(TIER_P))[None, :]
    tiers, labels = posterior_labels(np.concatenate([sharp, flat]), 0.1)
    assert list(tiers) == [5, 4] and list(labels) == [5, 4]


def test_item_table_covers_the_catalogue(tiny_world) -> None:
    cfg, _ = tiny_world
    items = item_tier_likelihoods(cfg.demo)
    assert len(items) == 4 * cfg.demo.n_items
    assert set(items["behavior"]) == {"click", "fav", "cart", "buy"}
    assert all(len(v) == 7 and np.isfinite(v).all() for v in items["ll"].head(50))


def test_ceiling_reads_the_tier_from_behaviour(spark, tiny_world) -> None:
    cfg, tables = tiny_world
    days = tables.partitions(t.PPP_LABELS)[-3:]
    got = ceiling_scores(spark, tables, cfg.demo, days, cfg.sequences.max_len, cfg.sequences.lookback_days)["all"]
    assert got["labels"] > 50 and got["mean_events"] > 5
    # far above the prior's best guess (the most common tier, 22%) ...
    assert got["tier_accuracy"] > 0.6
    # ... and no better on the noisy labels than knowing the tier can be (90% + the clipped ends)
    assert got["ppp_accuracy"] <= 0.95
    fewer = ceiling_scores(spark, tables, cfg.demo, days, 3, cfg.sequences.lookback_days, use_profile=False)["all"]
    assert fewer["mean_events"] <= 3
    assert fewer["tier_accuracy"] < got["tier_accuracy"]
