"""The object-confidence reward: the mean detector confidence of the objects a prompt asks for."""
import pytest

from services.geneval.detections import Detection
from services.geneval.scoring import object_confidence, parse_metadata
from tests.services.geneval.test_scoring import counting, two_object


def det(class_name, confidence, x=0, color=None):
    return Detection(class_name=class_name, confidence=confidence, box=(float(x), 0.0, x + 8.0, 8.0), color=color)


def test_each_requested_object_contributes_its_confidence_and_a_missing_one_zero():
    metadata = parse_metadata(counting(3))
    assert object_confidence([det("square", 0.9, x) for x in (0, 10, 20)], metadata) == pytest.approx(0.9)
    assert object_confidence([det("square", 0.9), det("square", 0.6, 10)], metadata) == pytest.approx(0.5)
    assert object_confidence([], metadata) == 0.0


def test_only_the_most_confident_objects_of_the_requested_class_count():
    metadata = parse_metadata({"tag": "single_object", "include": [{"class": "circle", "count": 1}]})
    found = [det("circle", 0.2), det("circle", 0.7, 10), det("square", 1.0, 20)]
    assert object_confidence(found, metadata) == pytest.approx(0.7)


def test_it_rises_continuously_with_confidence_with_no_threshold():
    metadata = parse_metadata(two_object("circle", "square"))
    values = [object_confidence([det("circle", c), det("square", 0.5, 10)], metadata) for c in (0.05, 0.29, 0.31, 0.9)]
    assert values == sorted(values) and len(set(values)) == 4
