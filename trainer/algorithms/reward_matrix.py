"""The per-step reward matrix that the branched algorithms log (TempFlow-GRPO Fig. 1 left): for each branch step k,
the mean and std (population) of the rewards of the branches that left the anchor at k, so a user can see where
exploration pays. Keys: reward_by_step/k{k}_mean, reward_by_step/k{k}_std, plus the overall reward/mean, reward/std.
"""
from __future__ import annotations

import torch


def reward_summary(rewards: torch.Tensor) -> dict[str, float]:
    """Overall mean/std of a reward tensor of any shape."""
    flat = rewards.reshape(-1).to(torch.float64)
    return {"reward/mean": float(flat.mean()), "reward/std": float(flat.std(correction=0)) if flat.numel() else 0.0}


def reward_by_step_metrics(rewards: torch.Tensor, branch_steps: list[int]) -> dict[str, float]:
    """rewards: [..., |K|, B] (the step axis second to last); returns mean/std per branch step and overall."""
    metrics = reward_summary(rewards)
    per_step = rewards.movedim(-2, 0).reshape(len(branch_steps), -1).to(torch.float64)
    for slot, k in enumerate(branch_steps):
        metrics[f"reward_by_step/k{k}_mean"] = float(per_step[slot].mean())
        metrics[f"reward_by_step/k{k}_std"] = float(per_step[slot].std(correction=0))
    return metrics
