"""P5: the clipped GRPO surrogate with optional per-step weights (docs/algorithms.md section 1, P5; [FG]
scripts/train_sd3.py; TempFlow-GRPO's noise-aware weights, TF eq. 8).

    r   = exp(l_theta - l_old)
    L   = mean_rows max(-w A r, -w A clip(r, 1 - eps, 1 + eps))

w = 1 for Flow-GRPO; TempFlow passes w_k = C s_k per row. The KL term (P3) is added by the caller, unweighted.
Also returns the usual diagnostics: approx_kl = mean (l_theta - l_old)^2 / 2 and the clip fraction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SurrogateTerms:
    """The per-row surrogate and its diagnostics."""

    per_row: torch.Tensor  # [B]: max(-w A r, -w A clip(r)) per row, carries the graph
    ratio: torch.Tensor  # [B]: r = exp(l_theta - l_old), detached
    approx_kl: float  # mean (l_theta - l_old)^2 / 2 over rows (the [FG] diagnostic)
    clip_fraction: float  # fraction of rows where |r - 1| > eps


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float, weights: torch.Tensor | float = 1.0) -> SurrogateTerms:
    """The PPO-clip surrogate per row ([B] inputs; `weights` scalar or [B])."""
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    weighted_adv = advantages.detach() * weights
    unclipped = -weighted_adv * ratio
    clipped = -weighted_adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_row = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        approx_kl = float(0.5 * (log_ratio**2).mean())
        clip_fraction = float(((ratio - 1.0).abs() > clip_range).float().mean())
    return SurrogateTerms(per_row=per_row, ratio=ratio.detach(), approx_kl=approx_kl, clip_fraction=clip_fraction)
