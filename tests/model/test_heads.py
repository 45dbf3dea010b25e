"""Heads learn what they should from their own inputs."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from training.model import L2RHead
from training.modules import FrozenNorm


def test_l2r_head_learns_a_ranking_when_features_have_a_non_zero_mean() -> None:
    """In training lists a relevant feature is shifted (lists are kept for their clicks); without
    the offset the pointwise loss would push its weight negative to produce the base rate."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    relevance = torch.randn(n, generator=gen) + 1.0                  # mean 1 after normalisation
    noise = torch.randn(n, 2, generator=gen)
    feats = torch.cat([relevance.unsqueeze(1), noise], dim=1)
    clicked = (torch.rand(n, generator=gen) < torch.sigmoid(-2.0 + 0.8 * relevance)).float()
    head = L2RHead(in_dim=4, rank_dim=3, hidden=8, dropout=0.0, rank_norm=FrozenNorm([0.0] * 3, [1.0] * 3))
    task_in = torch.ones(n, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        score = head(task_in, feats)
        loss = F.softplus(-(2 * clicked - 1) * score).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = head.weights(task_in[:1])[0]
    assert out[0] > 0.3                  # the relevant feature's weight is positive
    assert out[-1] < -1.0                # the offset carries the low click rate
    assert abs(float(out[1])) < 0.2 and abs(float(out[2])) < 0.2
