"""P1: the Flow-GRPO SDE step with its Gaussian log-probability (docs/algorithms.md section 1, P1; [FG]
`flow_grpo/diffusers_patch/sd3_sde_with_logprob.py`, paper eq. 5 written for decreasing sigma).

    sigma~_i = a * sqrt(sigma_i / (1 - (sigma_i == 1 ? sigma_max : sigma_i)))     # sigma_max = schedule sigma_1
    mu_i     = x*(1 + sigma~^2*dt/(2 sigma)) + v*(1 + sigma~^2*(1 - sigma)/(2 sigma))*dt,   dt = sigma_{i+1} - sigma_i < 0
    s_i      = sigma~ * sqrt(|dt|)
    x_{i+1}  = mu_i + s_i * eps
    l(x')    = mean_d[ -(x' - mu)^2 / (2 s^2) - log s - log sqrt(2 pi) ]

All math runs in fp32 whatever the model's dtype. sigma / sigma_next may be python floats, 0-d tensors or one value
per row ([B]); rows of one call may therefore sit at different steps (Flow-GRPO's shuffled training minibatches).
With a = 0 the step is the Euler step and no log-prob exists (returned as None). x' is detached inside the
log-prob, as in [FG]: gradients flow only through mu.

`noise_block` b > 1 puts the noise (and the score correction) in the subspace of b x b block-constant images and
scores the subspace coordinates (trainer.sampling.noise_subspace; not in the papers). b = 1 is the papers' step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.sampling.noise_subspace import block_coordinates, block_noise_shape, embed_block_noise, project_to_blocks

_LOG_SQRT_2PI = math.log(math.sqrt(2.0 * math.pi))


@dataclass
class SDEStep:
    """One transition of the sampler."""

    next_x: torch.Tensor  # [B, ...] fp32: the sampled (or given) x_{i+1}
    mean: torch.Tensor  # [B, ...] fp32: mu_i, carries the graph of v
    std: torch.Tensor  # [B] fp32: s_i, per-element std of the transition
    sigma_tilde: torch.Tensor  # [B] fp32: the SDE noise scale sigma~_i (before the sqrt(|dt|) factor)
    log_prob: torch.Tensor | None  # [B] fp32: mean_d log N(next_x; mean, s^2); None when s == 0 (a = 0)
    # with noise_block b > 1 the mean over d runs over the b x b block coordinates (noise_subspace)


def per_row(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] value as fp32 of shape [B, 1, ..., 1] (or [] for a scalar) broadcastable against `like`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"per-row value must be scalar or [{like.shape[0]}], got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def row_vector(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A broadcast per-row value ([] or [B, 1, ...]) flattened to [B]."""
    return value.reshape(-1).expand(batch) if value.numel() == 1 else value.reshape(batch)


def sde_sigma_tilde(sigma: torch.Tensor, sigma_max: float | torch.Tensor, noise_level: float) -> torch.Tensor:
    """sigma~ = a * sqrt(sigma / (1 - sigma')), sigma' = sigma_max where sigma == 1 (the [FG] clamp), else sigma."""
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float32, device=sigma.device)
    return torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level


def sde_step_mean(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor,
                  sigma_max: float | torch.Tensor, noise_level: float,
                  noise_block: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, s, sigma~) of P1 in fp32, s and sigma~ in broadcast shape ([] or [B, 1, ...]); with noise_block b > 1
    the score correction term of mu is projected onto the b x b block-constant subspace."""
    x = x.float()
    v = v.float()
    sigma_t = per_row(sigma, x)
    dt = per_row(sigma_next, x) - sigma_t
    sigma_tilde = sde_sigma_tilde(sigma_t, sigma_max, noise_level)
    correction = sigma_tilde**2 / (2 * sigma_t) * (x + (1 - sigma_t) * v) * dt
    mean = x + v * dt + project_to_blocks(correction, noise_block)
    std = sigma_tilde * torch.sqrt(-dt)
    return mean, std, sigma_tilde


def gaussian_log_prob(next_x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      noise_block: int = 1) -> torch.Tensor:
    """mean_d log N(next_x; mean, std^2) per row ([B]); next_x is treated as data (detached). With noise_block
    b > 1, d runs over the block coordinates P^T (next_x - mean)."""
    residual = block_coordinates(next_x.detach().float() - mean, noise_block)
    elementwise = -(residual**2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return elementwise.mean(dim=tuple(range(1, elementwise.ndim)))


def sde_step_with_logprob(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor,
                          sigma_next: float | torch.Tensor, sigma_max: float | torch.Tensor, noise_level: float, *,
                          next_x: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, noise_block: int = 1) -> SDEStep:
    """P1. Samples x_{i+1} (noise from `noise`, else drawn with `generator`) unless `next_x` is given, in which case
    it only scores it (the training pass recomputes l(x_{i+1} | x_i) under the current policy). With noise_block
    b > 1, `noise` has the block shape [B, ..., H/b, W/b] (block_noise_shape)."""
    mean, std, sigma_tilde = sde_step_mean(x, v, sigma, sigma_next, sigma_max, noise_level, noise_block)
    batch = x.shape[0]
    if next_x is None:
        if noise is None:
            noise = torch.randn(block_noise_shape(x.shape, noise_block), generator=generator, dtype=torch.float32,
                                device=x.device)
        next_x = mean + std * embed_block_noise(noise.float(), noise_block)
    log_prob = gaussian_log_prob(next_x, mean, std, noise_block) if bool((std > 0).all()) else None
    return SDEStep(next_x=next_x.float(), mean=mean, std=row_vector(std, batch),
                   sigma_tilde=row_vector(sigma_tilde, batch), log_prob=log_prob)
