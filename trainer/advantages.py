"""P4: group-relative advantages (docs/algorithms.md section 1, P4; [FG] `flow_grpo/stat_tracking.py`).

For a reward matrix R[row, column] and a group key per row:
- per-group std (Flow-GRPO Fixed, TempFlow seed groups, `global_std=False`):
      A = (R - mean_group(R)) / (std_group(R) + eps)
- batch std (original Flow-GRPO, `global_std=True`):
      A = (R - mean_group(R)) / (std_all(R) + eps),  std_all over every reward of the epoch on all ranks
Means and stds run along the row axis (per column), population std (ddof=0) by default as numpy does in [FG];
Pave-GRPO uses ddof=1 and eps=1e-8. Statistics are computed over the rows of ALL ranks: rewards and group keys go
through the `gather` callable (identity in one process), so group keys must mean the same thing on every rank (a
stable hash of the prompt string for prompt groups). Each rank gets back the advantages of its own rows.

Also here: the zero-advantage row mask (rows whose A is 0 at every column are dropped; the mask is padded back with
randomly chosen dropped rows so the kept count stays divisible by the number of minibatches, as [FG] does) and
the +-adv_clip_max clamp applied at loss time. Group statistics are computed in float64.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

Gather = Callable[[torch.Tensor], torch.Tensor]


def local_gather(tensor: torch.Tensor) -> torch.Tensor:
    """The single-process `gather`: every row is local."""
    return tensor


def stable_group_key(*parts: object) -> int:
    """A 63-bit key that is identical on every rank and in every process for the same parts (e.g. the prompt)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _std(values: torch.Tensor, ddof: int, dim: int | None) -> torch.Tensor:
    count = values.shape[dim] if dim is not None else values.numel()
    if count - ddof <= 0:
        return torch.zeros_like(values.mean(dim=dim) if dim is not None else values.mean())
    return values.std(dim=dim, correction=ddof) if dim is not None else values.std(correction=ddof)


def group_advantages(rewards: torch.Tensor, group_keys: torch.Tensor, gather: Gather = local_gather, *,
                     global_std: bool = False, eps: float = 1e-4, ddof: int = 0) -> torch.Tensor:
    """Advantages for the local rows. rewards: [n] or [n, c] (one row per sample, one column per trained step);
    group_keys: int64 [n]. Returns float32 in the shape of `rewards`."""
    squeeze = rewards.ndim == 1
    local = (rewards.unsqueeze(1) if squeeze else rewards).to(torch.float64)
    keys = group_keys.to(torch.int64).reshape(-1)
    if keys.shape[0] != local.shape[0]:
        raise ValueError(f"{keys.shape[0]} group keys for {local.shape[0]} reward rows")
    all_rewards = gather(local)
    all_keys = gather(keys)
    advantages = torch.empty_like(local)
    batch_std = _std(all_rewards, ddof, None) if global_std else None
    for key in torch.unique(keys).tolist():
        members = all_rewards[all_keys == key]
        mean = members.mean(dim=0)
        std = batch_std if global_std else _std(members, ddof, 0)
        rows = keys == key
        advantages[rows] = (local[rows] - mean) / (std + eps)
    advantages = advantages.to(torch.float32)
    return advantages.squeeze(1) if squeeze else advantages


def nonzero_advantage_mask(advantages: torch.Tensor, divisible_by: int = 1,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [n]: rows with a nonzero advantage at some column; padded with random zero rows so that the kept count
    is divisible by `divisible_by` when enough zero rows exist ([FG] train_sd3.py)."""
    adv = advantages.reshape(advantages.shape[0], -1)
    mask = adv.abs().sum(dim=1) != 0
    kept = int(mask.sum())
    remainder = kept % divisible_by
    if remainder:
        dropped = torch.where(~mask)[0]
        needed = divisible_by - remainder
        if len(dropped) >= needed:
            pick = torch.randperm(len(dropped), generator=generator)[:needed]
            mask[dropped[pick]] = True
    return mask


def clamp_advantages(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """A clamped to +-adv_clip_max ([FG] `adv_clip_max`, 5 by default)."""
    return torch.clamp(advantages, -adv_clip_max, adv_clip_max)
