"""A second deterministic test scorer (image contrast), so mixing tests have two rewards that disagree.

`ContrastScorer`: value = standard deviation of the pixels / 255 (population std). Runnable as a real service:

    python -m tests.trainer.test_reward_contrast_scorer --port 8124
"""
from __future__ import annotations

import argparse

import numpy as np

from services.common.scorer import Scorer, ScorerInfo, ScorerInput, ScorerOutput

__test__ = False  # a helper module, not a test module


def contrast(image: np.ndarray) -> float:
    """The reward this scorer computes: pixel std / 255."""
    return float(np.std(image.astype(np.float64))) / 255.0


class ContrastScorer(Scorer):
    """value = std(image) / 255; no weights, no sleep."""

    def setup(self) -> None:
        pass

    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        return [ScorerOutput(value=contrast(item.image)) for item in items]

    def info(self) -> ScorerInfo:
        return ScorerInfo(name="contrast", model="tests.trainer.test_reward_contrast_scorer.ContrastScorer",
                          revision="1", score_min=0.0, score_max=0.5, description="pixel std / 255 (a test scorer)")


def build(args: argparse.Namespace) -> ContrastScorer:
    return ContrastScorer()


if __name__ == "__main__":
    from services.common.serve import run_service

    raise SystemExit(run_service(build, name="contrast", description="a deterministic test scorer (contrast)"))
