"""What a GenEval detector backend produces, and the interface every backend implements.

GenEval's scoring (services.geneval.scoring) works on detections only: a class name, a confidence, a box, a mask
and (when the backend knows it) a colour. Two backends produce them: the `shapes` backend (classical computer
vision on the shapes world, services.geneval.shapes_detector) and the `mmdet` backend (Mask2Former + GenEval's CLIP
colour classifier, services.geneval.mmdet_backend).

Colour. GenEval classifies colour only for the objects a colour clause needs (the `count` most confident
detections of the clause's class), with CLIP on the box crop with the mask composited on grey. A backend of that
kind leaves `Detection.color` as None and implements `classify_colors`, which the scorer calls once per batch with
every crop the batch's clauses need. A backend that knows colour at detection time (shapes) sets `Detection.color`
and inherits the default `classify_colors`, which returns those colours.

Nothing here imports torch: the mmdet backend imports its heavy libraries in its own module.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected object in one image."""

    class_name: str  # detector class name as GenEval metadata names it, e.g. "circle", "dog"
    confidence: float  # detector score in [0, 1]; scoring thresholds it (0.3, or 0.9 for counting)
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the scored image, x right, y down
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # HxW bool, True on the object
    color: str | None = None  # colour name when the backend classified it at detection time, else None


@dataclass(frozen=True)
class ColorRequest:
    """Colour classification wanted for some detections of one image (one GenEval colour clause)."""

    image: np.ndarray  # HxWx3 uint8 RGB, the scored image
    detections: tuple[Detection, ...]  # the detections whose colours are wanted, in order
    class_name: str  # the clause's class (GenEval's CLIP templates mention it: "a photo of a {c} {class}")


class DetectorBackend(abc.ABC):
    """A detector behind GenEval scoring. `setup` loads weights once; `detect` runs one forward over a batch."""

    name: str = "detector"  # backend name reported in /v1/info ("shapes", "mmdet")

    def setup(self) -> None:
        """Load weights (raise services.common.scorer.WeightsNotFoundError when missing). Default: nothing."""

    @property
    @abc.abstractmethod
    def classes(self) -> tuple[str, ...]:
        """Class names this backend can detect; metadata naming another class is an invalid item."""

    @property
    @abc.abstractmethod
    def colors(self) -> tuple[str, ...]:
        """Colour names this backend can tell apart; metadata naming another colour is an invalid item."""

    @abc.abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Detect objects in each HxWx3 uint8 RGB image; one list per image, any order, unthresholded."""

    def classify_colors(self, requests: list[ColorRequest]) -> list[list[str]]:
        """Colour names for each request's detections, one list per request, in order.

        Default: the colours the backend set at detection time. Backends that classify colour separately
        (GenEval's CLIP classifier) override this and should batch all requests into few forwards.
        """
        answers: list[list[str]] = []
        for request in requests:
            colours = []
            for detection in request.detections:
                if detection.color is None:
                    raise ValueError(
                        f"{type(self).__name__} left the colour of a {detection.class_name!r} detection unset and "
                        "does not override classify_colors"
                    )
                colours.append(detection.color)
            answers.append(colours)
        return answers

    def describe(self) -> dict[str, Any]:
        """Model description for /v1/info: keys `model`, `revision`, `device`, `dtype` (all strings)."""
        return {"model": self.name, "revision": "", "device": "cpu", "dtype": "float32"}
