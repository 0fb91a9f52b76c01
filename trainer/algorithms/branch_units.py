"""Training data of the branched algorithms (TempFlow-GRPO, Pave-GRPO) and its minibatches.

A branched batch holds, per seed s and branch slot (step k): the anchor state x_k (shared by all branches), the B
branch states x'_{k,b}, their sampling log-probs, advantages and a keep mask. Two views of a set of (seed, k) pairs:
- `BranchStepUnit`: one row per (seed, k) with all its branches: the model is evaluated ONCE per pair
  (docs/algorithms.md section 3 [D], invariant 9);
- `TransitionUnit`: one row per kept (seed, k, b), duplicating x_k B times, as the official TempFlow code trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.algorithms.base import TrainingBatch
from trainer.algorithms.transition_loss import TransitionUnit
from trainer.models.base import Conditioning


@dataclass
class BranchedBatch(TrainingBatch):
    """Per (seed, branch slot) training data of a branched rollout."""

    anchor_states: torch.Tensor  # [S, |K|, ...] x_k of the anchor at each branch step
    branch_next: torch.Tensor  # [S, |K|, B, ...] x'_{k,b}
    old_log_prob: torch.Tensor  # [S, |K|, B] l_old(x'_{k,b} | x_k)
    advantages: torch.Tensor  # [S, |K|, B] A_{k,b}
    keep: torch.Tensor  # [S, |K|, B] bool: branches that enter the loss
    weights: torch.Tensor  # [|K|] per-step surrogate weight w_k
    sigma: torch.Tensor  # [|K|] sigma_k
    sigma_next: torch.Tensor  # [|K|] sigma_{k+1}
    steps: torch.Tensor  # [|K|] int64 branch step k of each slot
    seed_prompt: torch.Tensor  # [S] int64 prompt index of each seed
    prompt_cond: Conditioning  # one row per prompt
    metrics: dict[str, float] = field(default_factory=dict)

    def pairs(self) -> torch.Tensor:
        """[P, 2] (seed, slot) pairs with at least one kept branch, in seed-major order."""
        return torch.nonzero(self.keep.any(dim=2), as_tuple=False)


@dataclass
class BranchStepUnit:
    """A minibatch of (seed, k) pairs, each with all B of its branches."""

    states: torch.Tensor  # [P, ...] anchor x_k
    next_states: torch.Tensor  # [P, B, ...] x'_{k,b}
    old_log_prob: torch.Tensor  # [P, B]
    advantages: torch.Tensor  # [P, B]
    keep: torch.Tensor  # [P, B] bool
    weights: torch.Tensor  # [P] w_k
    sigma: torch.Tensor  # [P] sigma_k
    sigma_next: torch.Tensor  # [P] sigma_{k+1}
    step: torch.Tensor  # [P] int64 k
    cond: Conditioning  # P rows


def branch_step_unit(batch: BranchedBatch, pairs: torch.Tensor) -> BranchStepUnit:
    """The deduplicated view of `pairs` ([P, 2] of (seed, slot))."""
    seed, slot = pairs[:, 0], pairs[:, 1]
    return BranchStepUnit(
        states=batch.anchor_states[seed, slot], next_states=batch.branch_next[seed, slot],
        old_log_prob=batch.old_log_prob[seed, slot], advantages=batch.advantages[seed, slot],
        keep=batch.keep[seed, slot], weights=batch.weights[slot], sigma=batch.sigma[slot],
        sigma_next=batch.sigma_next[slot], step=batch.steps[slot],
        cond=batch.prompt_cond.index(batch.seed_prompt[seed]))


def duplicated_transition_unit(batch: BranchedBatch, pairs: torch.Tensor) -> TransitionUnit:
    """The official (duplicated) view of the same pairs: one row per kept branch, x_k repeated."""
    unit = branch_step_unit(batch, pairs)
    branches = unit.keep.shape[1]
    keep = unit.keep.reshape(-1)
    pair_of_row = torch.arange(len(pairs)).repeat_interleave(branches)[keep]
    return TransitionUnit(
        states=unit.states[pair_of_row], next_states=unit.next_states.flatten(0, 1)[keep],
        old_log_prob=unit.old_log_prob.reshape(-1)[keep], advantages=unit.advantages.reshape(-1)[keep],
        weights=unit.weights[pair_of_row], sigma=unit.sigma[pair_of_row], sigma_next=unit.sigma_next[pair_of_row],
        step=unit.step[pair_of_row], cond=unit.cond.index(pair_of_row))
