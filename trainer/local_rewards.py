"""Rewards computed in-process by `Scorer` objects (no HTTP), behind the same interface as the network client.

`LocalRewardClient({"pickscore": (scorer, 1.0)})` scores a RewardQuery synchronously with each scorer's
`prepare` + `score_prepared` (the hooks the service runs), mixes with trainer.rewards.mixer.RewardMixer, and
returns an already-finished handle. It exists to measure what the network costs (bench/trainer.py) and for
single-machine experiments; training runs normally use trainer.rewards.scoring_pool.RewardClient.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

import numpy as np
import torch

from services.common.scorer import Scorer, ScorerInput
from trainer.algorithms.base import RewardQuery
from trainer.rewards.mixer import MixedRewards, RewardMixer
from trainer.rewards.reward_set import ReloadResult
from trainer.rewards.spec import MixingMode


class LocalRewardClient:
    def __init__(self, scorers: dict[str, tuple[Scorer, float]],
                 mixing: MixingMode | str = MixingMode.SUM_THEN_NORMALIZE):
        self.scorers = scorers  # reward name -> (scorer after setup(), weight)
        self.mixer = RewardMixer({name: weight for name, (_, weight) in scorers.items()}, MixingMode(mixing))

    def _score_one(self, scorer: Scorer, items: list[ScorerInput]) -> np.ndarray:
        outputs = scorer.score_prepared(scorer.prepare(items), items)
        failed = [i for i, out in enumerate(outputs) if out.value is None]
        if failed:
            raise RuntimeError(f"reward {scorer.info().name!r} failed on items {failed}: "
                               f"{[outputs[i].error for i in failed][:3]}")
        return np.array([out.value for out in outputs], dtype=np.float64)

    def submit(self, query: RewardQuery) -> concurrent.futures.Future:
        images = query.images.cpu().numpy()
        items = [ScorerInput(image=images[i], prompt=query.prompts[i], metadata=query.metadata[i])
                 for i in range(len(images))]
        raw = {name: torch.from_numpy(self._score_one(scorer, items)) for name, (scorer, _) in self.scorers.items()}
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(self.mixer.mix(raw=raw, group=query.group.cpu(), model_info=self.model_info()))
        return future

    def score(self, query: RewardQuery) -> MixedRewards:
        return self.submit(query).result()

    def reload_if_changed(self) -> ReloadResult:
        return ReloadResult(False, "")

    def model_info(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(scorer.info()) for name, (scorer, _) in self.scorers.items()}

    def close(self) -> None:
        pass
