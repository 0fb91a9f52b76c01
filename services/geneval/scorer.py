"""GenEvalScorer: the GenEval reward as a served Scorer, over any DetectorBackend.

One batch = one `detect` forward over all valid items, then one `classify_colors` call with every crop the
batch's colour clauses need, then GenEval's rules (services.geneval.scoring) per item. Each reply carries the
components `strict` (GenEval correctness, 0 or 1) and `partial` (Flow-GRPO-style partial credit in [0, 1]), and the
per-clause detail; which is the reward `value` is a setting (partial credit by default, for training). The setting
`graded` adds a third component and makes it the value: the partial credit averaged over the confidence threshold
scaled from 0 to GenEval's (services.geneval.scoring.graded_credit), a shaped reward that grows continuously with
the detector's confidence in each object.
An item whose metadata is not GenEval's fails alone, with a message naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from services.common.scorer import Scorer, ScorerInfo, ScorerInput, ScorerOutput
from services.geneval.detections import ColorRequest, Detection, DetectorBackend
from services.geneval.scoring import (
    GenEvalMetadata,
    InvalidMetadataError,
    ScoringConfig,
    colour_targets,
    evaluate,
    graded_credit,
    graded_levels,
    object_confidence,
    parse_metadata,
    select_detections,
    union_colour_targets,
)

COMPONENTS = ["strict", "partial"]  # component names of every successful item
SHAPED = ["graded", "confidence"]  # shaped rewards: a component only when it is the selected value
REWARDS = [*COMPONENTS, *SHAPED]  # what the reply's value can be


@dataclass(frozen=True)
class GenEvalScorerConfig:
    """How detections become a reward."""

    reward: Literal["partial", "strict", "graded", "confidence"] = "partial"  # which component is the reply's `value`
    scoring: ScoringConfig = field(default_factory=ScoringConfig)  # GenEval's thresholds
    detail_detections: bool = True  # include the selected detections (boxes, confidences, colours) in the detail


def _detections_detail(selected: dict[str, list[Detection]]) -> dict[str, list[dict[str, Any]]]:
    detail = {}
    for class_name, detections in selected.items():
        entries = []
        for d in detections:
            entry: dict[str, Any] = {"box": [round(float(v), 2) for v in d.box], "confidence": round(float(d.confidence), 4)}
            if d.color is not None:
                entry["color"] = d.color
            entries.append(entry)
        detail[class_name] = entries
    return detail


class GenEvalScorer(Scorer):
    """GenEval over a detector backend (shapes or mmdet)."""

    def __init__(self, backend: DetectorBackend, config: GenEvalScorerConfig = GenEvalScorerConfig()) -> None:
        if config.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {config.reward!r}")
        self.backend = backend
        self.config = config
        self.components = COMPONENTS + ([config.reward] if config.reward in SHAPED else [])

    def setup(self) -> None:
        self.backend.setup()

    def info(self) -> ScorerInfo:
        described = self.backend.describe()
        return ScorerInfo(
            name="geneval",
            model=f"{self.backend.name}:{described.get('model', '')}",
            revision=str(described.get("revision", "")),
            dtype=str(described.get("dtype", "float32")),
            device=str(described.get("device", "cpu")),
            score_min=0.0,
            score_max=1.0,
            description=(f"GenEval ({self.backend.name} detector); value = {self.config.reward} "
                         "(strict: GenEval correctness 0/1; partial: mean of per-check credits; graded: partial "
                         "credit averaged over the confidence threshold from 0 to GenEval's; confidence: the mean "
                         "detector confidence of the requested objects)"),
            components=list(self.components),
        )

    def warmup_inputs(self) -> list[ScorerInput]:
        metadata = {"tag": "single_object", "include": [{"class": self.backend.classes[0], "count": 1}]}
        return [ScorerInput(image=np.full((64, 64, 3), 255, dtype=np.uint8), prompt="warm-up", metadata=metadata)]

    def _parse(self, item: ScorerInput) -> GenEvalMetadata:
        return parse_metadata(item.metadata, classes=self.backend.classes, colors=self.backend.colors)

    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        outputs: list[ScorerOutput | None] = [None] * len(items)
        parsed: dict[int, GenEvalMetadata] = {}
        for index, item in enumerate(items):
            try:
                parsed[index] = self._parse(item)
            except InvalidMetadataError as error:
                outputs[index] = ScorerOutput(value=None, error=f"invalid metadata: {error}")
        valid = sorted(parsed)
        detections = self.backend.detect([items[i].image for i in valid]) if valid else []
        if len(detections) != len(valid):
            raise RuntimeError(f"{self.backend.name} returned {len(detections)} detection lists for {len(valid)} images")
        config = self.config.scoring
        found_of = dict(zip(valid, detections))
        selected = {i: select_detections(found, parsed[i].tag, config) for i, found in found_of.items()}
        graded = self.config.reward == "graded"
        levels = ({i: graded_levels(found, parsed[i].tag, config) for i, found in zip(valid, detections)}
                  if graded else {})
        # every crop the batch's colour clauses need (at GenEval's thresholds, and below them for `graded`), in one
        # call; colour_of[i] maps id(detection) to its colour
        requests: list[ColorRequest] = []
        request_items: list[int] = []
        for i in valid:
            selections = [level.selected for level in levels.get(i, [])] + [selected[i]]
            for clause_index, targets in union_colour_targets(selections, parsed[i]).items():
                requests.append(ColorRequest(items[i].image, tuple(targets), parsed[i].include[clause_index].class_name))
                request_items.append(i)
        answers = self.backend.classify_colors(requests) if requests else []
        colour_of: dict[int, dict[int, str]] = {i: {} for i in valid}
        for request, i, answer in zip(requests, request_items, answers):
            colour_of[i].update({id(d): colour for d, colour in zip(request.detections, answer)})
        for i in valid:
            colours = {index: [colour_of[i][id(d)] for d in targets]
                       for index, targets in colour_targets(selected[i], parsed[i]).items()}
            evaluation = evaluate(selected[i], parsed[i], colours, config)
            strict = 1.0 if evaluation.strict else 0.0
            components = {"strict": strict, "partial": evaluation.partial}
            if graded:
                components["graded"] = graded_credit(levels[i], parsed[i], colour_of[i])
            elif self.config.reward == "confidence":
                components["confidence"] = object_confidence(found_of[i], parsed[i])
            detail = evaluation.detail()
            if self.config.detail_detections:
                detail["detections"] = _detections_detail(selected[i])
            outputs[i] = ScorerOutput(value=components[self.config.reward], components=components, detail=detail)
        assert all(output is not None for output in outputs)
        return outputs  # type: ignore[return-value]
