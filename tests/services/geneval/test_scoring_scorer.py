"""GenEvalScorer: batches, colour requests to the backend, per-item errors, the value setting."""
import numpy as np
import pytest

from services.common.scorer import ScorerInput
from services.geneval.detections import ColorRequest, Detection, DetectorBackend
from services.geneval.scorer import GenEvalScorer, GenEvalScorerConfig


class FixedDetections(DetectorBackend):
    """A backend that 'detects' given detections (colour unset) and classifies colour separately, recording calls,
    like the mmdet backend's CLIP colour classifier does."""

    name = "fixed"

    def __init__(self, per_image, colour_of):
        self.per_image = per_image  # detections returned for every image, in call order
        self.colour_of = colour_of  # box -> colour name, the 'classifier'
        self.colour_calls: list[list[ColorRequest]] = []
        self.detect_calls = 0

    @property
    def classes(self):
        return ("circle", "square", "triangle")

    @property
    def colors(self):
        return ("red", "green", "blue", "yellow")

    def detect(self, images):
        self.detect_calls += 1
        return [list(self.per_image[i]) for i in range(len(images))]

    def classify_colors(self, requests):
        self.colour_calls.append(list(requests))
        return [[self.colour_of[d.box] for d in request.detections] for request in requests]


def det(class_name, box, confidence=0.95):
    return Detection(class_name, confidence, tuple(float(v) for v in box))


IMAGE = np.full((32, 32, 3), 255, dtype=np.uint8)
RED_CIRCLE = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
ATTR = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                         {"class": "square", "count": 1, "color": "blue"}]}


def test_colours_are_requested_once_per_batch_for_the_counted_detections_only():
    circle_hi, circle_lo, square = (0, 0, 5, 5), (10, 10, 15, 15), (20, 20, 25, 25)
    backend = FixedDetections(
        [[det("circle", circle_hi, 0.9), det("circle", circle_lo, 0.8), det("square", square)]] * 2,
        {circle_hi: "red", circle_lo: "blue", square: "blue"},
    )
    scorer = GenEvalScorer(backend)
    outputs = scorer.score([ScorerInput(IMAGE, "a photo of a red circle", RED_CIRCLE),
                            ScorerInput(IMAGE, "a photo of a red circle and a blue square", ATTR)])
    assert backend.detect_calls == 1 and len(backend.colour_calls) == 1
    requests = backend.colour_calls[0]
    assert [(r.class_name, [d.box for d in r.detections]) for r in requests] == [
        ("circle", [circle_hi]), ("circle", [circle_hi]), ("square", [square])]
    assert [o.components["strict"] for o in outputs] == [1.0, 1.0]


def test_no_colour_call_when_no_clause_needs_colour():
    backend = FixedDetections([[det("circle", (0, 0, 5, 5))]], {})
    GenEvalScorer(backend).score([ScorerInput(IMAGE, "a circle", {"tag": "single_object",
                                                                  "include": [{"class": "circle", "count": 1}]})])
    assert backend.colour_calls == []


def test_value_is_partial_credit_by_default_and_strict_when_set():
    backend = FixedDetections([[det("circle", (0, 0, 5, 5))]], {(0.0, 0.0, 5.0, 5.0): "green"})
    item = ScorerInput(IMAGE, "a photo of a red circle", RED_CIRCLE)
    partial = GenEvalScorer(backend).score([item])[0]
    strict = GenEvalScorer(backend, GenEvalScorerConfig(reward="strict")).score([item])[0]
    assert partial.components == {"strict": 0.0, "partial": 0.5} == strict.components
    assert partial.value == 0.5 and strict.value == 0.0


def test_bad_metadata_fails_that_item_only():
    backend = FixedDetections([[det("circle", (0, 0, 5, 5))]] * 2, {})
    outputs = GenEvalScorer(backend).score([
        ScorerInput(IMAGE, "?", {"tag": "single_object", "include": [{"class": "dragon", "count": 1}]}),
        ScorerInput(IMAGE, "a circle", {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}),
        ScorerInput(IMAGE, "no metadata", None),
    ])
    assert outputs[0].value is None and "metadata.include[0].class" in outputs[0].error
    assert outputs[1].value == 1.0 and outputs[1].error is None
    assert outputs[2].value is None and "metadata is required" in outputs[2].error


def test_detail_names_clauses_and_selected_detections():
    backend = FixedDetections([[det("circle", (0, 0, 5, 5)), det("circle", (9, 9, 12, 12), 0.2)]], {})
    out = GenEvalScorer(backend).score([ScorerInput(IMAGE, "a circle", {
        "tag": "single_object", "include": [{"class": "circle", "count": 1}]})])[0]
    assert out.detail["clauses"][0]["found"] == 1
    assert out.detail["detections"] == {"circle": [{"box": [0.0, 0.0, 5.0, 5.0], "confidence": 0.95}]}


def test_unknown_reward_setting_is_rejected():
    with pytest.raises(ValueError):
        GenEvalScorer(FixedDetections([], {}), GenEvalScorerConfig(reward="mean"))


def test_graded_value_adds_a_component_and_colours_low_confidence_objects_in_the_same_call():
    faint, square = (0, 0, 5, 5), (20, 20, 25, 25)
    backend = FixedDetections([[det("circle", faint, 0.15), det("square", square)]],
                              {faint: "red", square: "blue"})
    scorer = GenEvalScorer(backend, GenEvalScorerConfig(reward="graded"))
    output = scorer.score([ScorerInput(IMAGE, "a photo of a red circle and a blue square", ATTR)])[0]
    assert scorer.info().components == ["strict", "partial", "graded"]
    assert output.components["strict"] == 0.0 and output.components["partial"] == 0.5
    assert output.value == output.components["graded"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert len(backend.colour_calls) == 1
    assert [(r.class_name, [d.box for d in r.detections]) for r in backend.colour_calls[0]] == [
        ("circle", [faint]), ("square", [square])]
    assert GenEvalScorer(backend).info().components == ["strict", "partial"]


def test_confidence_value_is_the_mean_confidence_of_the_requested_objects_whatever_their_colour():
    faint, square = (0, 0, 5, 5), (20, 20, 25, 25)
    backend = FixedDetections([[det("circle", faint, 0.15), det("square", square, 0.85)]],
                              {faint: "green", square: "blue"})
    scorer = GenEvalScorer(backend, GenEvalScorerConfig(reward="confidence"))
    output = scorer.score([ScorerInput(IMAGE, "a photo of a red circle and a blue square", ATTR)])[0]
    assert scorer.info().components == ["strict", "partial", "confidence"]
    assert output.value == output.components["confidence"] == pytest.approx((0.15 + 0.85) / 2)
