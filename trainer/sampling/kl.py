"""P3: closed-form KL between the policy's and the reference policy's Gaussian SDE transitions (docs/algorithms.md
section 1, P3). The reference policy is the model with its LoRA adapter disabled (FlowModel.reference()).

Both transitions share the std s_i, so KL_i = mean_d (mu_theta - mu_ref)^2 / (2 s_i^2)
  = (|dt|/2) (sigma~(1 - sigma)/(2 sigma) + 1/sigma~)^2 mean_d (v_theta - v_ref)^2      [FG paper eq. 6; TF eq. 6]

kl_mode:
- "exact"          ([TF-code]) divides by s_i^2 = (sigma~ sqrt|dt|)^2: the exact Gaussian KL (per latent element).
- "flowgrpo_code"  ([FG] code) divides by sigma~^2, i.e. |dt| * exact; [TF-code] notes beta must be ~10x larger.
This is the analytic KL, not a k3 sample estimator.
"""
from __future__ import annotations

from typing import Literal

import torch

from trainer.sampling.noise_subspace import block_coordinates

KLMode = Literal["exact", "flowgrpo_code"]
KL_MODES: tuple[str, ...] = ("exact", "flowgrpo_code")


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, sigma_tilde: torch.Tensor,
                    kl_mode: KLMode = "exact", noise_block: int = 1) -> torch.Tensor:
    """Per-row KL [B] from transition means [B, ...] and the per-row std s and noise scale sigma~ ([B]); with
    noise_block b > 1 the KL of the block-subspace transitions (mean over the block coordinates)."""
    difference = block_coordinates(mean - ref_mean, noise_block)
    squared = (difference**2).mean(dim=tuple(range(1, difference.ndim)))
    if kl_mode == "exact":
        scale = std
    elif kl_mode == "flowgrpo_code":
        scale = sigma_tilde
    else:
        raise ValueError(f"kl_mode must be one of {KL_MODES}, got {kl_mode!r}")
    return squared / (2 * scale.reshape(-1) ** 2)
