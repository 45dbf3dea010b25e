"""model.price_reference: which per-category price the model's prices are relative to."""
from __future__ import annotations

import pytest

from core.errors import PlatformError
from features import stats as st
from features.stats import FeatureStat
from training.datasets import Statistics

CATALOGUE = [FeatureStat(f"{st.CATEGORY_PRICE}[1]", 10, 3.0, 0.1), FeatureStat(f"{st.CATEGORY_PRICE}[2]", 5, 4.0, 0.1),
             FeatureStat(st.REL_PRICE, 15, 0.0, 0.2)]
BEHAVIOURS = [FeatureStat(f"{st.BEHAVIOUR_CATEGORY_PRICE}[1]", 70, 3.4, 0.05),
              FeatureStat(st.BEHAVIOUR_REL_PRICE, 70, 0.0, 0.09)]


def test_behaviour_reference_falls_back_to_the_catalogue_for_unvisited_categories() -> None:
    stats = CATALOGUE + BEHAVIOURS
    assert st.category_prices(stats, "catalogue") == {1: 3.0, 2: 4.0}
    assert st.category_prices(stats, "behaviours") == {1: 3.4, 2: 4.0}
    assert st.norm_from_stats(stats, 2, "catalogue")[st.REL_PRICE] == ([0.0], [0.2])
    assert st.norm_from_stats(stats, 2, "behaviours")[st.REL_PRICE] == ([0.0], [0.09])


def test_model_inputs_follow_the_reference_and_refuse_a_day_without_it() -> None:
    new = Statistics("2026-11-14", 3, 2, tuple(CATALOGUE + BEHAVIOURS))
    inputs = new.model_inputs("behaviours")
    assert inputs["category_log_price"] == {1: 3.4, 2: 4.0} and inputs["norm"][st.REL_PRICE] == ([0.0], [0.09])
    assert new.model_inputs("catalogue")["category_log_price"] == {1: 3.0, 2: 4.0}
    old = Statistics("2026-11-14", 3, 2, tuple(CATALOGUE))
    assert old.model_inputs("catalogue")["category_log_price"] == {1: 3.0, 2: 4.0}
    with pytest.raises(PlatformError, match=r"dt=2026-11-14 .*price_reference='behaviours'.*feature_stats --date"):
        old.model_inputs("behaviours")
