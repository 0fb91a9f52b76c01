"""Mixing several rewards into the one scalar per image that the GRPO advantage uses.

Two modes (design.md "The trainer"; the normalisation is algorithms.md P4's group statistic):
- sum_then_normalize (Flow-GRPO's multi-reward scoring): mixed = sum_k w_k * r_k on the raw rewards; the
  algorithm's group advantage (P4) normalises the sum afterwards.
- normalize_then_sum: each reward is first normalised within each advantage group g (RewardQuery.group),
  n_k = (r_k - mean_g(r_k)) / (std_g(r_k) + eps), std with ddof=0 as numpy's default and eps = 1e-4 as in P4,
  then mixed = sum_k w_k * n_k. This keeps a reward with a large raw scale from drowning the others. Statistics
  are process-local (per group); P4 applies afterwards as usual.
A reward value that is missing for an item is NaN internally (TRL's convention) and raises `MissingRewardError`
here: a step never trains on a missing reward. Computation is float64; the mixed tensor is float64 [M].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.rewards.spec import MixingMode, RewardSetConfig


class MissingRewardError(RuntimeError):
    """Some item has no value (NaN) for some reward at mixing time."""


@dataclass
class MixedRewards:
    """The mixed reward of every image of a query, with everything needed to log how it was made."""

    mixed: torch.Tensor  # float64 [M]: the reward the algorithm trains on
    raw: dict[str, torch.Tensor]  # reward name -> float64 [M]: the service's values
    contributions: dict[str, torch.Tensor]  # reward name -> float64 [M]: w * r (or w * normalised r); sums to mixed
    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # reward -> component -> [M]
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # reward -> the service's ModelInfo dict
    weights: dict[str, float] = field(default_factory=dict)  # reward name -> weight used for this mix
    mode: MixingMode = MixingMode.SUM_THEN_NORMALIZE  # how the rewards were combined
    # reward -> {"requests", "retries", "queue_ms", "compute_ms"}: what scoring cost at the service (ms)
    service_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def log_metrics(self) -> dict[str, float]:
        """Scalars for TensorBoard/JSONL: mixed mean/std, and per reward raw mean/std, contribution mean, weight."""
        metrics = {"reward/mixed_mean": float(self.mixed.mean()),
                   "reward/mixed_std": float(self.mixed.std(correction=0))}
        for name, raw in self.raw.items():
            metrics[f"reward/{name}/raw_mean"] = float(raw.mean())
            metrics[f"reward/{name}/raw_std"] = float(raw.std(correction=0))
            metrics[f"reward/{name}/contribution_mean"] = float(self.contributions[name].mean())
            metrics[f"reward/{name}/weight"] = float(self.weights.get(name, float("nan")))
            for stat, value in self.service_stats.get(name, {}).items():
                metrics[f"reward/{name}/{stat}"] = float(value)
            for component, values in self.components.get(name, {}).items():
                metrics[f"reward/{name}/{component}_mean"] = float(values.nanmean())
        return metrics


def group_normalize(values: torch.Tensor, group: torch.Tensor, eps: float) -> torch.Tensor:
    """(values - mean_g) / (std_g + eps) within each group id g; std is the population std (ddof=0)."""
    out = torch.empty_like(values)
    for g in torch.unique(group):
        rows = group == g
        part = values[rows]
        out[rows] = (part - part.mean()) / (part.std(correction=0) + eps)
    return out


class RewardMixer:
    """Weighted combination of named rewards in one of the two MixingModes."""

    def __init__(self, weights: dict[str, float], mode: MixingMode | str = MixingMode.SUM_THEN_NORMALIZE,
                 eps: float = 1e-4) -> None:
        if not weights:
            raise ValueError("a RewardMixer needs at least one reward")
        self.weights = dict(weights)  # reward name -> weight
        self.mode = MixingMode(mode)  # how rewards combine
        self.eps = eps  # normalize_then_sum's eps in (r - mean) / (std + eps)

    @classmethod
    def from_config(cls, config: RewardSetConfig) -> "RewardMixer":
        """The mixer a reward config describes (its weights, mode and eps)."""
        return cls(config.weights(), config.mixing, config.normalize_eps)

    def mix(self, raw: dict[str, torch.Tensor], group: torch.Tensor,
            components: dict[str, dict[str, torch.Tensor]] | None = None,
            model_info: dict[str, dict[str, Any]] | None = None,
            service_stats: dict[str, dict[str, float]] | None = None) -> MixedRewards:
        """Mix raw rewards (name -> [M], NaN = missing) for images in advantage groups `group` [M]."""
        missing = set(self.weights) - set(raw)
        if missing:
            raise MissingRewardError(f"no scores for reward(s) {sorted(missing)}; got {sorted(raw)}")
        values = {name: raw[name].to(torch.float64) for name in self.weights}
        sizes = {name: v.shape for name, v in values.items()}
        if len(set(sizes.values())) != 1 or group.shape != next(iter(sizes.values())):
            raise ValueError(f"reward shapes {sizes} and group shape {tuple(group.shape)} disagree")
        for name, v in values.items():
            bad = torch.nonzero(~torch.isfinite(v)).flatten().tolist()
            if bad:
                raise MissingRewardError(f"reward {name!r} has no value for item(s) {bad[:10]}"
                                         f"{' ...' if len(bad) > 10 else ''} of {v.numel()}; refusing to train on it")
        if self.mode is MixingMode.NORMALIZE_THEN_SUM:
            contributions = {n: self.weights[n] * group_normalize(v, group, self.eps) for n, v in values.items()}
        else:
            contributions = {n: self.weights[n] * v for n, v in values.items()}
        mixed = torch.stack(list(contributions.values())).sum(0)
        return MixedRewards(mixed=mixed, raw=values, contributions=contributions, components=components or {},
                            model_info=model_info or {}, weights=dict(self.weights), mode=self.mode,
                            service_stats=service_stats or {})
