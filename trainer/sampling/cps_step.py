"""P2: the Coefficients-Preserving Sampling step ([FG] `sde_type='cps'`, arXiv 2509.05952; docs/algorithms.md
section 1, P2).

    s    = sigma_{i+1} * sin(eta * pi / 2)
    x0^  = x - sigma_i v,   x1^ = x + (1 - sigma_i) v
    mu   = (1 - sigma_{i+1}) x0^ + sqrt(sigma_{i+1}^2 - s^2) x1^,   x' = mu + s eps
    l(x') = -mean_d (x' - mu)^2           # as in [FG]: the Gaussian constants AND the 1/(2 s^2) scale are dropped

The x0^ and noise coefficients of the sample are exact, so one step hits the right marginal (invariant 14). With
eta = 0 the step is the Euler step x + dt v (invariant 1). fp32 math; x' is detached inside the log-prob.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.sampling.sde_step import per_row, row_vector


@dataclass
class CPSStep:
    """One CPS transition."""

    next_x: torch.Tensor  # [B, ...] fp32: the sampled (or given) x_{i+1}
    mean: torch.Tensor  # [B, ...] fp32: mu, carries the graph of v
    std: torch.Tensor  # [B] fp32: s = sigma_{i+1} sin(eta pi / 2)
    log_prob: torch.Tensor  # [B] fp32: the surrogate -mean_d (x' - mu)^2


def cps_step_with_logprob(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor,
                          sigma_next: float | torch.Tensor, eta: float, *, next_x: torch.Tensor | None = None,
                          noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> CPSStep:
    """P2. Samples x_{i+1} unless `next_x` is given (then only scores it)."""
    x = x.float()
    v = v.float()
    sigma_t = per_row(sigma, x)
    sigma_n = per_row(sigma_next, x)
    std = sigma_n * math.sin(eta * math.pi / 2)
    pred_x0 = x - sigma_t * v
    pred_noise = x + (1 - sigma_t) * v
    mean = pred_x0 * (1 - sigma_n) + pred_noise * torch.sqrt(sigma_n**2 - std**2)
    if next_x is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
        next_x = mean + std * noise.float()
    elementwise = -((next_x.detach().float() - mean) ** 2)
    log_prob = elementwise.mean(dim=tuple(range(1, elementwise.ndim)))
    return CPSStep(next_x=next_x.float(), mean=mean, std=row_vector(std, x.shape[0]), log_prob=log_prob)
