"""The small interface every reward model implements to be served by the common server core.

A served reward is a `Scorer` (LitServe-style hooks): `setup()` loads weights once (and may raise
`WeightsNotFoundError`), `score()` runs one forward over a batch of already-decoded items. Decoding of the wire
format, batching across requests, deadlines, metrics and encoding of replies belong to the server core
(services.common.*), never to a scorer. This module imports no torch: scorers import their heavy libraries
inside their own packages.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class WeightsNotFoundError(RuntimeError):
    """Raised by `Scorer.setup()` when weights are missing; the message says where it looked and how to fix it."""


@dataclass
class ScorerInput:
    """One decoded item handed to a scorer."""

    image: np.ndarray  # HxWx3 uint8 RGB, already decoded and validated by the server core
    prompt: str  # the text prompt the image was generated for
    metadata: dict[str, Any] | None = None  # request Struct as a plain dict (e.g. GenEval's tag/include/exclude)


@dataclass
class ScorerOutput:
    """One scored item. Set `error` (and leave value None) to fail this item only."""

    value: float | None  # the reward; None when the item failed
    components: dict[str, float] = field(default_factory=dict)  # named parts, e.g. {"mu": .., "sigma": ..}
    error: str | None = None  # human-readable reason this item failed
    detail: dict[str, Any] | None = None  # optional structured detail (JSON-able), e.g. GenEval per-clause results


@dataclass
class ScorerInfo:
    """Static description of the loaded model, reported in /v1/info and in every reply."""

    name: str  # reward name, e.g. "pickscore"
    model: str  # path or hub id that was loaded
    revision: str = ""  # weights revision / commit hash / file digest
    dtype: str = "float32"  # compute dtype
    device: str = "cpu"  # compute device
    score_min: float = 0.0  # nominal range of the value (informative)
    score_max: float = 1.0
    description: str = ""  # what the value means
    components: list[str] = field(default_factory=list)  # component names every successful item carries


class Scorer(abc.ABC):
    """A reward model behind the common server. Subclasses implement setup, score and info."""

    @abc.abstractmethod
    def setup(self) -> None:
        """Load weights (raise WeightsNotFoundError with a clear message when missing)."""

    @abc.abstractmethod
    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        """Score a batch in one forward; return one output per input, in order."""

    @abc.abstractmethod
    def info(self) -> ScorerInfo:
        """Describe the loaded model (valid after setup)."""

    def prepare(self, items: list[ScorerInput]) -> Any:
        """Optional CPU-side preprocessing of a batch (e.g. resize + tokenise). The server runs it in its own
        thread while the previous batch's forward runs; the default hands the items through unchanged."""
        return items

    def score_prepared(self, prepared: Any, items: list[ScorerInput]) -> list[ScorerOutput]:
        """The forward over what `prepare` returned; the default calls `score(items)`."""
        return self.score(items)

    def warmup_inputs(self) -> list[ScorerInput]:
        """Inputs for the warm-up forward run before /health/ready turns ready."""
        return [ScorerInput(image=np.full((64, 64, 3), 127, dtype=np.uint8), prompt="a photo")]
