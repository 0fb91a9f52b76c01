"""Model evaluations as the algorithms count them: velocity calls in row chunks, and the NFE of a call.

NFE = one transformer forward per sample; classifier-free guidance (guidance_scale > 1) costs 2 per sample
(base.Cost). `velocity_in_chunks` splits a large batch into calls of at most `max_rows` samples (0 = one call) and
returns fp32 velocities; it never changes the math, only peak memory.
"""
from __future__ import annotations

import torch

from trainer.models.base import Conditioning, FlowModel


def nfe_per_sample(guidance_scale: float) -> int:
    """Forwards per sample of one velocity evaluation: 2 with CFG, else 1."""
    return 2 if guidance_scale > 1.0 else 1


def velocity_in_chunks(model: FlowModel, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                       guidance_scale: float, max_rows: int = 0) -> torch.Tensor:
    """v(x, sigma) for every row of x (sigma: [B]), in calls of at most `max_rows` rows."""
    rows = x.shape[0]
    if max_rows <= 0 or rows <= max_rows:
        return model.velocity(x, sigma, cond, guidance_scale).float()
    parts = []
    for start in range(0, rows, max_rows):
        idx = slice(start, min(rows, start + max_rows))
        parts.append(model.velocity(x[idx], sigma[idx], cond.index(idx), guidance_scale).float())
    return torch.cat(parts)
