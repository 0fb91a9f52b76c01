"""The plug-in interface every GRPO variant implements (Flow-GRPO, Flow-GRPO Fixed, TempFlow-GRPO, Pave-GRPO).

The training loop (trainer.loop) is algorithm-agnostic. Per epoch it does:

    rollout = algo.rollout(model, prompts, metadata, generator)        # sampling plan of the algorithm, no grad
    rewards = reward_client.score(rollout.query, groups=rollout.query.group)   # over the network, mixed
    batch   = algo.prepare_training(rollout, rewards, gather)          # advantages (its own grouping), masks
    for unit in algo.training_units(batch, generator):                 # minibatches of trainable units
        loss, metrics = algo.loss(model, unit); loss.backward() ...    # the loop owns accumulation/optimizer

Each algorithm declares its rollout plan, advantage grouping and per-step loss weights, and counts model
evaluations in `algo.cost` so a run reports what it cost.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from trainer.models.base import FlowModel

# all_gather over data-parallel ranks: takes a local tensor [n, ...] and returns the concatenation over ranks in
# rank order. Single process: identity.
Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RewardQuery:
    """The images of one rollout that must be scored, with what the reward services need to know about each."""

    images: torch.Tensor  # uint8 [M, H, W, 3] on the CPU
    prompts: list[str]  # length M
    metadata: list[dict[str, Any] | None]  # length M (GenEval metadata etc.)
    branch: list[dict[str, int] | None]  # length M: {"group_id","seed","branch_step","sample_id"} or None
    group: torch.Tensor  # int64 [M]: the advantage group of each image (used by normalize_then_sum mixing)


@dataclass
class Cost:
    """Model evaluations (NFE: one transformer forward per sample; CFG counts 2) and reward calls."""

    sampling_nfe: int = 0  # forwards spent generating rollouts
    training_nfe: int = 0  # forwards (with backward) spent in the training pass
    reference_nfe: int = 0  # no-grad forwards of the reference policy for the KL
    reward_images: int = 0  # images sent to reward services
    trained_samples: int = 0  # rows that carried a gradient

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def model_nfe(self) -> int:
        """All model evaluations: sampling + training + reference (what an NFE budget counts)."""
        return self.sampling_nfe + self.training_nfe + self.reference_nfe


class Rollout(abc.ABC):
    """Algorithm-specific record of one epoch's sampling; `query` is what gets scored."""

    query: RewardQuery


class TrainingBatch(abc.ABC):
    """Algorithm-specific result of prepare_training. `metrics` holds scalars the loop logs once per epoch: reward
    and advantage statistics and, for branched algorithms, the per-step reward matrix (reward_by_step/k{k}_mean)."""

    metrics: dict[str, float]


class Algorithm(abc.ABC):
    name: str = "base"
    cost: Cost

    @abc.abstractmethod
    def rollout(self, model: FlowModel, prompts: list[str], metadata: list[dict | None],
                generator: torch.Generator) -> Rollout:
        """Sample this epoch's trajectories/branches for the given prompts (one entry per prompt group)."""

    @abc.abstractmethod
    def prepare_training(self, rollout: Rollout, rewards: torch.Tensor, gather: Gather) -> Any:
        """Turn rewards [M] (aligned with rollout.query) into advantages and the data the training pass needs."""

    @abc.abstractmethod
    def training_units(self, batch: Any, generator: torch.Generator) -> Iterator[Any]:
        """Yield minibatches for the training pass (shuffled with `generator`, masked rows removed)."""

    @abc.abstractmethod
    def loss(self, model: FlowModel, unit: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one minibatch (graph attached to the LoRA params) and scalar metrics to log."""
