"""A synthetic e-commerce world with latent structure, generated in parallel by Spark executors.

The generative model (documented with its oracle scores in ``docs/demo_world.md``):

* **Catalogue**: categories with a base price; shops with a main category and a price level
  1..7; items inherit shop category (mostly) and price level (with noise); brands, a style
  tag and a price tag. Talents have a category and a price level.
* **Users** have a latent purchasing-power tier 1..7, an activity rate, a preferred style
  and sparse category interests that **drift** from day to day. A buy in a category
  **satiates** the user there for a few days (lower click and much lower buy propensity).
* **Behaviour log**: clicks dominate; the price level of a behaviour's item is drawn around
  the user's tier with a spread that shrinks from click (wide) to buy (narrow), so a buy
  reveals price level far more than a click. Search behaviour carries a query of its category.
* **Impressions** come in sessions of ``items_per_session`` ranked items. Half of the sessions
  continue a recent browsing event (the user's short-term intent is that event's category),
  so recent behaviour predicts clicks better than old behaviour. Search sessions carry a query
  tied to a category, and a match between query and item category raises the click chance.
  Clicks, carts and buys of impressions also enter the behaviour log seconds later.
* **Follows**, **shop preferences** and **purchasing-power labels** depend on the same latent
  interests and tier; the labels carry noise.

Every random draw comes from a generator seeded by ``(seed, block)``, where a block is
``users_per_partition`` consecutive users, so the world is identical for the same config.
The catalogue is rebuilt identically on every executor from the seed.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd

from core.config import DemoWorldConfig
from core import tables as t

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

BEHAVIORS = np.array(["click", "fav", "cart", "buy"], dtype=object)
BEHAVIOR_P = np.array([0.885, 0.04, 0.045, 0.03])
# Spread (in price levels) of a behaviour's item around the user's tier: buys reveal tier.
BEHAVIOR_SIGMA = np.array([3.0, 1.6, 1.0, 0.45])
SCENES = np.array(["search", "recommend", "promo", None, "other"], dtype=object)
SCENE_P = np.array([0.40, 0.44, 0.11, 0.04, 0.01])
TIER_P = np.array([0.08, 0.14, 0.20, 0.22, 0.17, 0.12, 0.07])
LEVELS = np.arange(1, 8)
MODIFIERS = ("cheap", "new", "best", "gift", "sale", "official")
SYLLABLES = ("ka", "lo", "mi", "ru", "te", "no", "sa", "vi", "po", "ze", "da", "fu", "ri", "ko", "ma")
INTEREST_K = 4

USER_ID0, ITEM_ID0, SHOP_ID0, BRAND_ID0, CATEGORY_ID0, TALENT_ID0 = \
    100_000, 10_000_000, 5_000, 90_000, 100, 700_000
DAY_S = 86_400


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _sample_rows(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``prob`` (N, K) (rows need not be normalised)."""
    cum = np.cumsum(prob, axis=1)
    u = rng.random(len(prob)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), prob.shape[1] - 1)


def _sample_from(cum: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of indices with the cumulative weights ``cum`` (K,)."""
    return np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), len(cum) - 1)


def query_head(category: int) -> str:
    """The category's own query word, e.g. ``kamiru`` (deterministic)."""
    n = len(SYLLABLES)
    a, b, c = category % n, (category // n) % n, (category * 7 + 3) % n
    return SYLLABLES[a] + SYLLABLES[b] + SYLLABLES[c] + str(category // (n * n) or "")


@dataclass
class Catalogue:
    """Items, shops, brands and talents of the world (rebuilt identically from the seed)."""

    cat_log_price: np.ndarray
    cat_pop: np.ndarray
    shop_category: np.ndarray
    shop_level: np.ndarray
    shop_pop: np.ndarray
    brand_category: np.ndarray
    item_category: np.ndarray
    item_level: np.ndarray
    item_shop: np.ndarray
    item_brand: np.ndarray
    item_style: np.ndarray
    item_price: np.ndarray
    item_quality: np.ndarray
    item_pop: np.ndarray
    talent_category: np.ndarray
    talent_level: np.ndarray
    talent_pop: np.ndarray
    # sampling structure: items ordered by (category, level)
    seg_order: np.ndarray
    seg_glob: np.ndarray
    seg_mass: np.ndarray  # (C, 7) popularity mass of each (category, level)
    item_pop_cum: np.ndarray
    talent_by_cat: list[np.ndarray]
    shop_by_cat: list[np.ndarray]

    @staticmethod
    def build(cfg: DemoWorldConfig) -> "Catalogue":
        rng = _rng(cfg.seed, 0)
        C, S, B, I, Tn = cfg.n_categories, cfg.n_shops, cfg.n_brands, cfg.n_items, cfg.n_talents
        cat_log_price = rng.uniform(2.0, 6.0, C)
        cat_pop = rng.lognormal(0.0, 0.8, C)
        cat_cum = np.cumsum(cat_pop)
        shop_category = _sample_from(cat_cum, S, rng)
        shop_level = rng.choice(LEVELS, S, p=TIER_P)
        shop_pop = rng.lognormal(0.0, 1.0, S)
        brand_category = _sample_from(cat_cum, B, rng)
        shop_of_item = _sample_from(np.cumsum(shop_pop), I, rng)
        item_category = np.where(rng.random(I) < 0.85, shop_category[shop_of_item], _sample_from(cat_cum, I, rng))
        item_category[:C] = np.arange(C)  # every category has items
        item_level = np.clip(np.rint(shop_level[shop_of_item] + rng.normal(0, 0.8, I)), 1, 7).astype(np.int64)
        brands_by_cat = [np.flatnonzero(brand_category == c) for c in range(C)]
        pick = rng.random(I)
        item_brand = np.array([
            bc[int(p * len(bc))] if len(bc) else -1 for bc, p in zip((brands_by_cat[c] for c in item_category), pick)])
        item_style = rng.integers(0, cfg.n_styles, I)
        item_price = np.exp(cat_log_price[item_category] + 0.35 * (item_level - 4) + rng.normal(0, 0.08, I))
        item_quality = rng.normal(0, 1, I)
        item_pop = rng.lognormal(0.0, 1.0, I)
        # (category, level) segments for two-stage sampling: level first, then item by popularity.
        seg = item_category * 7 + (item_level - 1)
        order = np.lexsort((np.arange(I), seg))
        seg_sorted = seg[order]
        pop_sorted = item_pop[order]
        seg_mass = np.bincount(seg, weights=item_pop, minlength=C * 7).reshape(C, 7)
        cum_within = np.zeros(I)
        starts = np.searchsorted(seg_sorted, np.arange(C * 7))
        ends = np.searchsorted(seg_sorted, np.arange(C * 7), side="right")
        for k in np.flatnonzero(ends > starts):
            part = np.cumsum(pop_sorted[starts[k]:ends[k]])
            cum_within[starts[k]:ends[k]] = part / part[-1]
        seg_glob = seg_sorted + cum_within  # values in (k, k+1] for segment k
        talent_category = _sample_from(cat_cum, Tn, rng)
        talent_level = rng.choice(LEVELS, Tn, p=TIER_P)
        talent_pop = rng.lognormal(0.0, 1.0, Tn)
        return Catalogue(
            cat_log_price, cat_pop, shop_category, shop_level, shop_pop, brand_category, item_category,
            item_level, shop_of_item, item_brand, item_style, item_price, item_quality, item_pop,
            talent_category, talent_level, talent_pop, order, seg_glob, seg_mass, np.cumsum(item_pop),
            [np.flatnonzero(talent_category == c) for c in range(C)],
            [np.flatnonzero(shop_category == c) for c in range(C)])

    def sample_items(self, category: np.ndarray, level_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Item indices: level drawn ∝ popularity mass × ``level_weights`` (N, 7), then item by popularity."""
        w = self.seg_mass[category] * level_weights
        empty = w.sum(axis=1) <= 0
        w[empty] = self.seg_mass[category[empty]] + 1e-12
        level = _sample_rows(w, rng)
        k = category * 7 + level
        pos = np.searchsorted(self.seg_glob, k + np.maximum(rng.random(len(k)), 1e-9), side="left")
        return self.seg_order[np.minimum(pos, len(self.seg_order) - 1)]

    def popular_items(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _sample_from(self.item_pop_cum, n, rng)

    def pick_in_category(self, pools: list[np.ndarray], pop: np.ndarray, category: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
        """One member of ``pools[c]`` per entry (by popularity); a popular one overall if the pool is empty."""
        out = np.empty(len(category), dtype=np.int64)
        glob = np.cumsum(pop)
        for c in np.unique(category):
            idx = np.flatnonzero(category == c)
            pool = pools[c]
            if len(pool) == 0:
                out[idx] = _sample_from(glob, len(idx), rng)
            else:
                out[idx] = pool[_sample_from(np.cumsum(pop[pool]), len(idx), rng)]
        return out


def category_queries(cfg: DemoWorldConfig) -> list[list[str]]:
    """The ``queries_per_category`` query strings of each category."""
    return [[f"{query_head(c)} {MODIFIERS[k % len(MODIFIERS)]}" + ("" if k < len(MODIFIERS) else f" {k}")
             for k in range(cfg.queries_per_category)] for c in range(cfg.n_categories)]


# ------------------------------------------------------------------------------ the union row
UNION_SCHEMA_DDL = (
    "tbl string, user_id bigint, item_id bigint, behavior string, scene string, query string, "
    "event_time timestamp, rank_features array<float>, clicked int, carted int, bought int, "
    "talent_id bigint, talent_category_id bigint, followed int, tier int, shop_id bigint, label int, "
    "p_click double, p_cart_given_click double, p_buy_given_click double, p_follow double, p_label double, "
    "activity double, top_categories array<bigint>, top_weights array<float>, age_level int, gender string, "
    "city_level int, dt string")

TABLE_OF_TAG = {
    "events": t.EVENTS, "impressions": t.IMPRESSIONS, "follows": t.FOLLOWS, "ppp_labels": t.PPP_LABELS,
    "shop_prefs": t.SHOP_PREFS, "truth_users": t.TRUTH_USERS, "truth_interests": t.TRUTH_INTERESTS,
    "truth_impressions": t.TRUTH_IMPRESSIONS, "truth_follows": t.TRUTH_FOLLOWS,
    "truth_shop_prefs": t.TRUTH_SHOP_PREFS, "users": t.USERS,
}


def _frame(tag: str, **cols: object) -> pd.DataFrame:
    df = pd.DataFrame(cols)
    df.insert(0, "tbl", tag)
    return df


def _times(day: _dt.date, seconds: np.ndarray) -> pd.Series:
    base = np.datetime64(day.isoformat(), "us")
    micros = np.rint(np.clip(seconds, 0, DAY_S - 1e-3) * 1e6).astype(np.int64)
    return pd.Series(base + micros.astype("timedelta64[us]"))


def _top(weights: np.ndarray, k: int = 5) -> tuple[list[np.ndarray], list[np.ndarray]]:
    idx = np.argsort(-weights, axis=1)[:, :k]
    w = np.take_along_axis(weights, idx, axis=1)
    cats = [(row[wr > 0] + CATEGORY_ID0).astype(np.int64) for row, wr in zip(idx, w)]
    ws = [wr[wr > 0].astype(np.float32) for wr in w]
    return cats, ws


def simulate_block(cfg: DemoWorldConfig, rank_dim: int, block: int, cat: Catalogue | None = None) \
        -> Iterator[pd.DataFrame]:
    """Simulate users ``[block*P, (block+1)*P)`` over all days; yields union-schema frames."""
    cat = cat or Catalogue.build(cfg)
    rng = _rng(cfg.seed, 1, block)
    lo = block * cfg.users_per_partition
    hi = min(cfg.n_users, lo + cfg.users_per_partition)
    n = hi - lo
    if n <= 0:
        return
    C = cfg.n_categories
    uid = USER_ID0 + np.arange(lo, hi, dtype=np.int64)
    tier = rng.choice(LEVELS, n, p=TIER_P)
    activity = rng.lognormal(-0.18, 0.6, n)
    style = rng.integers(0, cfg.n_styles, n)
    # sparse initial interests: INTEREST_K categories by popularity, Dirichlet weights
    W = np.zeros((n, C))
    cat_cum = np.cumsum(cat.cat_pop)
    for _ in range(INTEREST_K):
        W[np.arange(n), _sample_from(cat_cum, n, rng)] += rng.gamma(1.0, 1.0, n)
    W /= W.sum(axis=1, keepdims=True)
    S = np.zeros((n, C))
    queries = category_queries(cfg)

    top_c, top_w = _top(W)
    yield _frame("truth_users", user_id=uid, tier=tier.astype(np.int32), activity=activity,
                 top_categories=top_c, top_weights=top_w)
    # profile: age weakly, city strongly tied to tier; some nulls; 1% of users missing
    age = np.clip(np.rint(rng.normal(2.0 + 0.3 * tier, 1.4)), 0, 6).astype(np.int64)
    city = np.clip(np.rint(rng.normal(6.0 - 0.7 * tier, 0.9)), 1, 5).astype(np.int64)
    gender = np.where(rng.random(n) < 0.55, "F", "M").astype(object)
    keep = rng.random(n) >= 0.01
    yield _frame(
        "users", user_id=uid[keep],
        age_level=pd.array(np.where(rng.random(n) < 0.05, pd.NA, age)[keep], dtype="Int32"),
        gender=np.where(rng.random(n) < 0.05, np.array(None, dtype=object), gender)[keep],
        city_level=pd.array(np.where(rng.random(n) < 0.05, pd.NA, city)[keep], dtype="Int32"),
    )

    for d in range(cfg.days):
        day = cfg.start_date + _dt.timedelta(days=d)
        dts = day.isoformat()
        # -- interest drift: one interest category moves to a new one
        movers = np.flatnonzero(rng.random(n) < cfg.drift_per_day)
        if len(movers):
            old = _sample_rows(W[movers] + 1e-12 * (W[movers] > 0), rng)
            new = _sample_from(cat_cum, len(movers), rng)
            moved = W[movers, old].copy()
            W[movers, old] = 0.0
            W[movers, new] += moved
        W *= np.exp(rng.normal(0, 0.1, W.shape)) * (W > 0)
        W /= W.sum(axis=1, keepdims=True)
        E = W * (1.0 - 0.7 * S)
        E /= E.sum(axis=1, keepdims=True)
        Emax = E.max(axis=1)
        top_c, top_w = _top(W)
        yield _frame("truth_interests", user_id=uid, top_categories=top_c, top_weights=top_w, dt=dts)

        # -- organic behaviour
        cnt = rng.poisson(cfg.events_per_user_day * activity)
        eu = np.repeat(np.arange(n), cnt)
        m = len(eu)
        explore = rng.random(m) < 0.12
        ecat = np.where(explore, _sample_from(cat_cum, m, rng), _sample_rows(E[eu], rng))
        beh = _sample_from(np.cumsum(BEHAVIOR_P), m, rng)
        sig = BEHAVIOR_SIGMA[beh]
        lw = np.exp(-((LEVELS[None, :] - tier[eu][:, None]) ** 2) / (2 * sig[:, None] ** 2))
        eitem = cat.sample_items(ecat, lw, rng)
        esec = rng.random(m) * DAY_S
        escene = SCENES[_sample_from(np.cumsum(SCENE_P), m, rng)]
        qpick = rng.integers(0, cfg.queries_per_category, m)
        equery = np.array([queries[c][q] if s == "search" else None
                           for c, q, s in zip(cat.item_category[eitem], qpick, escene)], dtype=object)

        # -- impression sessions (search and recommend)
        n_search = rng.poisson(cfg.search_sessions_per_user_day * activity)
        n_rec = rng.poisson(cfg.recommend_sessions_per_user_day * activity)
        su = np.concatenate([np.repeat(np.arange(n), n_search), np.repeat(np.arange(n), n_rec)])
        is_search = np.concatenate([np.ones(n_search.sum(), bool), np.zeros(n_rec.sum(), bool)])
        ns = len(su)
        # half the sessions continue a recent organic event of the same user (short-term intent)
        ssec = rng.random(ns) * DAY_S
        intent = np.full(ns, -1)
        if m:
            first = np.searchsorted(eu, np.arange(n))
            has_ev = cnt[su] > 0
            anchored = has_ev & (rng.random(ns) < 0.5)
            pick_ev = first[su] + (rng.random(ns) * np.maximum(cnt[su], 1)).astype(np.int64)
            pick_ev = np.minimum(pick_ev, m - 1)
            ssec = np.where(anchored, esec[pick_ev] + rng.uniform(20, 900, ns), ssec)
            late = ssec > DAY_S - 1200.0  # keep the session (and its clicks) inside the day
            ssec[late] = rng.uniform(0, DAY_S - 1200.0, int(late.sum()))
            intent = np.where(anchored, ecat[pick_ev], -1)
        qcat = np.where(intent >= 0, np.where(rng.random(ns) < 0.7, intent, _sample_rows(E[su], rng)),
                        np.where(rng.random(ns) < 0.8, _sample_rows(E[su], rng), _sample_from(cat_cum, ns, rng)))
        sq = np.array([queries[c][k] if s else None
                       for c, k, s in zip(qcat, rng.integers(0, cfg.queries_per_category, ns), is_search)],
                      dtype=object)
        L = cfg.items_per_session
        iu = np.repeat(su, L)
        isess = np.repeat(np.arange(ns), L)
        pos = np.tile(np.arange(1, L + 1), ns)
        srch = is_search[isess]
        flat = np.ones((len(iu), 7))
        from_cat = np.where(srch, rng.random(len(iu)) < 0.85, rng.random(len(iu)) < 0.5)
        icat_pick = np.where(srch, qcat[isess], _sample_rows(E[iu], rng)) if len(iu) else np.zeros(0, np.int64)
        iitem = np.where(from_cat, cat.sample_items(icat_pick, flat, rng), cat.popular_items(len(iu), rng)) \
            if len(iu) else np.zeros(0, np.int64)
        # an item is shown at most once per session
        first_seen = np.unique(isess.astype(np.int64) * (cfg.n_items + 1) + iitem, return_index=True)[1]
        keep_imp = np.zeros(len(iu), bool)
        keep_imp[first_seen] = True
        iu, isess, pos, srch, iitem = iu[keep_imp], isess[keep_imp], pos[keep_imp], srch[keep_imp], iitem[keep_imp]
        icat = cat.item_category[iitem]
        interest = E[iu, icat] / Emax[iu]
        pm = np.abs(cat.item_level[iitem] - tier[iu])
        intent_hit = (icat == intent[isess]).astype(float)
        qmatch = (srch & (icat == qcat[isess])).astype(float)
        stylem = (cat.item_style[iitem] == style[iu]).astype(float)
        sat = S[iu, icat]
        logit = (-5.0 + 2.0 * interest + 1.4 * intent_hit + 1.0 * qmatch - 0.35 * pm + 0.4 * stylem
                 - 0.8 * sat + 0.35 * cat.item_quality[iitem] - 0.06 * (pos - 1))
        p_click = _sigmoid(logit)
        p_cart = _sigmoid(-2.0 + 0.6 * interest - 0.3 * pm)
        p_buy = _sigmoid(-3.1 + 1.0 * interest - 0.9 * pm - 2.5 * sat + 0.3 * cat.item_quality[iitem])
        clicked = rng.random(len(iu)) < p_click
        carted = clicked & (rng.random(len(iu)) < p_cart)
        bought = clicked & (rng.random(len(iu)) < p_buy)
        rel = np.where(srch, qmatch, intent_hit)
        feats = [rel + rng.normal(0, 0.5, len(iu)), cat.item_quality[iitem] + rng.normal(0, 0.3, len(iu)),
                 np.log(cat.item_pop[iitem]), (pos - 1) / 10.0, cat.item_level[iitem] / 7.0,
                 np.log(cat.item_price[iitem])]
        while len(feats) < rank_dim:
            feats.append(rng.normal(0, 1, len(iu)))
        rank = np.stack(feats[:rank_dim], axis=1).astype(np.float32) if len(iu) else np.zeros((0, rank_dim))
        isec = ssec[isess]
        itime = _times(day, isec)
        yield _frame("impressions", user_id=uid[iu], item_id=ITEM_ID0 + iitem,
                     scene=np.where(srch, "search", "recommend"), query=sq[isess], event_time=itime,
                     rank_features=list(rank), clicked=clicked.astype(np.int32),
                     carted=carted.astype(np.int32), bought=bought.astype(np.int32), dt=dts)
        yield _frame("truth_impressions", user_id=uid[iu], item_id=ITEM_ID0 + iitem, event_time=itime,
                     p_click=p_click, p_cart_given_click=p_cart, p_buy_given_click=p_buy,
                     clicked=clicked.astype(np.int32), bought=bought.astype(np.int32), dt=dts)

        # -- behaviour log: organic events + the clicks/carts/buys of impressions, seconds later
        parts_u, parts_i, parts_b, parts_s, parts_sc, parts_q = [eu], [eitem], [BEHAVIORS[beh]], [esec], [escene], \
            [equery]
        for mask, name, lag in ((clicked, "click", (1, 120)), (carted, "cart", (120, 600)),
                                (bought, "buy", (300, 1100))):
            k = np.flatnonzero(mask)
            parts_u.append(iu[k])
            parts_i.append(iitem[k])
            parts_b.append(np.full(len(k), name, dtype=object))
            parts_s.append(isec[k] + rng.uniform(*lag, len(k)))
            parts_sc.append(np.where(srch[k], "search", "recommend").astype(object))
            parts_q.append(sq[isess[k]])
        au, ai, ab, asec = (np.concatenate(parts_u), np.concatenate(parts_i), np.concatenate(parts_b),
                            np.concatenate(parts_s))
        asc, aq = np.concatenate(parts_sc), np.concatenate(parts_q)
        dup = np.flatnonzero(rng.random(len(au)) < cfg.duplicate_event_share)
        order = np.concatenate([np.arange(len(au)), dup])
        yield _frame("events", user_id=uid[au[order]], item_id=ITEM_ID0 + ai[order], behavior=ab[order],
                     scene=asc[order], query=aq[order], event_time=_times(day, asec[order]), dt=dts)

        # -- satiation: buys of today damp the category for the next days
        S *= 0.5
        buy_mask = ab == "buy"
        S[au[buy_mask], cat.item_category[ai[buy_mask]]] = 1.0

        # -- talent follows
        nf = rng.poisson(cfg.follow_impressions_per_user_day * activity)
        fu = np.repeat(np.arange(n), nf)
        fcat = np.where(rng.random(len(fu)) < 0.5, _sample_rows(E[fu], rng) if len(fu) else fu,
                        cat.talent_category[_sample_from(np.cumsum(cat.talent_pop), len(fu), rng)])
        tal = cat.pick_in_category(cat.talent_by_cat, cat.talent_pop, fcat, rng)
        tcat = cat.talent_category[tal]
        p_follow = _sigmoid(-2.6 + 2.4 * E[fu, tcat] / Emax[fu] - 0.35 * np.abs(cat.talent_level[tal] - tier[fu])
                            + 0.25 * np.log(cat.talent_pop[tal]))
        followed = (rng.random(len(fu)) < p_follow).astype(np.int32)
        ftime = _times(day, rng.random(len(fu)) * DAY_S)
        yield _frame("follows", user_id=uid[fu], talent_id=TALENT_ID0 + tal, talent_category_id=CATEGORY_ID0 + tcat,
                     event_time=ftime, followed=followed, dt=dts)
        yield _frame("truth_follows", user_id=uid[fu], talent_id=TALENT_ID0 + tal, event_time=ftime,
                     p_follow=p_follow, followed=followed, dt=dts)

        # -- shop preference (the downstream transfer task)
        nsp = rng.poisson(cfg.shop_impressions_per_user_day * activity)
        pu = np.repeat(np.arange(n), nsp)
        pcat = np.where(rng.random(len(pu)) < 0.5, _sample_rows(E[pu], rng) if len(pu) else pu,
                        cat.shop_category[_sample_from(np.cumsum(cat.shop_pop), len(pu), rng)])
        shop = cat.pick_in_category(cat.shop_by_cat, cat.shop_pop, pcat, rng)
        scat = cat.shop_category[shop]
        p_label = _sigmoid(-1.3 + 2.2 * E[pu, scat] / Emax[pu] - 0.45 * np.abs(cat.shop_level[shop] - tier[pu])
                           + 0.2 * np.log(cat.shop_pop[shop]))
        label = (rng.random(len(pu)) < p_label).astype(np.int32)
        ptime = _times(day, rng.random(len(pu)) * DAY_S)
        yield _frame("shop_prefs", user_id=uid[pu], shop_id=SHOP_ID0 + shop, event_time=ptime, label=label, dt=dts)
        yield _frame("truth_shop_prefs", user_id=uid[pu], shop_id=SHOP_ID0 + shop, event_time=ptime,
                     p_label=p_label, label=label, dt=dts)

        # -- purchasing-power labels with noise (a neighbouring tier)
        lab = np.flatnonzero(rng.random(n) < cfg.ppp_label_share_per_day)
        noisy = rng.random(len(lab)) < cfg.ppp_label_noise
        step = np.where(rng.random(len(lab)) < 0.5, -1, 1)
        ptier = np.clip(np.where(noisy, tier[lab] + step, tier[lab]), 1, 7).astype(np.int32)
        yield _frame("ppp_labels", user_id=uid[lab], tier=ptier, dt=dts)


def items_frame(cfg: DemoWorldConfig, lo: int, hi: int, cat: Catalogue | None = None) -> pd.DataFrame:
    """Rows ``[lo, hi)`` of raw/items, with the nulls real dimension tables have.

    0.3% of items are left out entirely (events of them keep unknown attributes).
    """
    cat = cat or Catalogue.build(cfg)
    rng = _rng(cfg.seed, 2, lo)
    idx = np.arange(lo, min(hi, cfg.n_items))
    n = len(idx)
    lvl = cat.item_level[idx]
    price_tag = np.where(lvl <= 2, "price:low", np.where(lvl <= 5, "price:mid", "price:high"))
    tags = [[p, f"style:s{s}"] for p, s in zip(price_tag, cat.item_style[idx])]
    brand = cat.item_brand[idx]
    df = pd.DataFrame({
        "item_id": ITEM_ID0 + idx,
        "shop_id": pd.array(np.where(rng.random(n) < 0.01, pd.NA, SHOP_ID0 + cat.item_shop[idx]), dtype="Int64"),
        "brand_id": pd.array(np.where((rng.random(n) < 0.08) | (brand < 0), pd.NA, BRAND_ID0 + brand), dtype="Int64"),
        "category_id": pd.array(np.where(rng.random(n) < 0.005, pd.NA, CATEGORY_ID0 + cat.item_category[idx]),
                                dtype="Int64"),
        "tags": [None if r < 0.03 else tg for tg, r in zip(tags, rng.random(n))],
        "price": np.where(rng.random(n) < 0.005, np.nan, np.round(cat.item_price[idx], 2)),
    })
    return df[rng.random(n) >= 0.003]


# ------------------------------------------------------------------------------ Spark side
def generate_world(spark: "SparkSession", cfg: DemoWorldConfig, rank_dim: int) -> dict[t.TableSpec, "DataFrame"]:
    """DataFrames of every raw table (and the ``raw/_truth`` tables), simulated on executors.

    The caller writes them; the union frame is persisted on disk so the simulation runs once.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    n_blocks = math.ceil(cfg.n_users / cfg.users_per_partition)

    def run_blocks(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        catalogue = Catalogue.build(cfg)
        cols = [c.split()[0] for c in UNION_SCHEMA_DDL.split(", ")]
        for batch in batches:
            for block in batch["id"].tolist():
                for frame in simulate_block(cfg, rank_dim, int(block), catalogue):
                    missing = {c: pd.Series([None] * len(frame), dtype=object, index=frame.index)
                               for c in cols if c not in frame.columns}
                    yield pd.concat([frame, pd.DataFrame(missing, index=frame.index)], axis=1)[cols]

    union = (spark.range(0, n_blocks, numPartitions=n_blocks)
             .mapInPandas(run_blocks, UNION_SCHEMA_DDL)
             .persist(StorageLevel.DISK_ONLY))
    out: dict[t.TableSpec, DataFrame] = {}
    for tag, spec in TABLE_OF_TAG.items():
        out[spec] = union.where(F.col("tbl") == tag).select(*spec.columns)

    item_chunk = 50_000
    n_item_blocks = math.ceil(cfg.n_items / item_chunk)

    def run_items(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        catalogue = Catalogue.build(cfg)
        for batch in batches:
            for b in batch["id"].tolist():
                yield items_frame(cfg, int(b) * item_chunk, (int(b) + 1) * item_chunk, catalogue)

    out[t.ITEMS] = spark.range(0, n_item_blocks, numPartitions=max(1, min(n_item_blocks, 64))) \
        .mapInPandas(run_items, t.ITEMS.schema)
    return out
