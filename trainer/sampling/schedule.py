"""Noise schedules sigma_0=1 > ... > sigma_N=0 for the flow samplers (docs/algorithms.md, "Schedules").

- `sd3_sigmas`: diffusers' FlowMatchEulerDiscreteScheduler with a static shift, exactly as SD3.5 uses it
  ([FG]/[TF-code]): u = linspace(1, u_min, N) with u_min the shifted sigma of timestep 1/1000, then
  sigma = s*u / (1 + (s-1)*u), and a final sigma_N = 0. The diffusers quirk leaves sigma_{N-1} ~ 0.0089 at N=10.
- `uniform_shifted_sigmas`: Pave-GRPO's schedule ([PAVE-code]): u_i = 1 - i/N for i=0..N, same shift.

Computed in float64 (as diffusers does in numpy) and returned as float32 tensors of length N+1.
"""
from __future__ import annotations

import torch


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The SD3 static time shift sigma = s*u / (1 + (s-1)*u) (identity at shift=1)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sd3_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """diffusers FlowMatchEuler sigmas for `num_steps` inference steps (float32 [N+1], last entry 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    one_train_step = torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64)
    u_min = shift_sigmas(one_train_step, shift)  # diffusers' scheduler.sigma_min (already shifted), reused as u
    u = torch.linspace(1.0, float(u_min), num_steps, dtype=torch.float64)
    sigmas = shift_sigmas(u, shift)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)


def uniform_shifted_sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """Pave-GRPO's sigmas: shift applied to u_i = 1 - i/N, i = 0..N (float32 [N+1], last entry 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return shift_sigmas(u, shift).to(torch.float32)


def num_trained_steps(num_steps: int, timestep_fraction: float) -> int:
    """Flow-GRPO's count of trained steps: int(N * timestep_fraction) (0.99 at N=10 gives 9; the last step is
    never trained). Clamped to [1, N]."""
    return max(1, min(num_steps, int(num_steps * timestep_fraction)))
