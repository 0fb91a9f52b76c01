"""The graded credit: partial credit averaged over the confidence threshold scaled from 0 to GenEval's."""
import pytest

from services.geneval.detections import Detection
from services.geneval.scoring import (ScoringConfig, graded_credit, graded_levels, parse_metadata,
                                      threshold_scale_intervals, union_colour_targets)
from tests.services.geneval.test_scoring import counting, judge, two_object


def det(class_name, confidence, x=0, color=None):
    return Detection(class_name=class_name, confidence=confidence, box=(float(x), 0.0, x + 8.0, 8.0), color=color)


def colour_needs(detections, metadata, config=ScoringConfig()):
    """Every detection whose colour graded_credit needs, per colour clause."""
    return union_colour_targets([level.selected for level in graded_levels(detections, metadata.tag, config)],
                                metadata)


def graded(detections, raw_metadata, config=ScoringConfig()):
    """graded_credit with colours read off the detections (as the shapes backend provides them)."""
    metadata = parse_metadata(raw_metadata)
    colour_of = {id(d): d.color for ds in colour_needs(detections, metadata, config).values() for d in ds}
    return graded_credit(graded_levels(detections, metadata.tag, config), metadata, colour_of)


COLOUR = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}


def test_intervals_cut_the_scale_at_each_confidence_over_the_tags_threshold_and_sum_to_one():
    intervals = threshold_scale_intervals([det("square", 0.45), det("square", 0.95)], "counting")
    assert [width for _, width in intervals] == pytest.approx([0.5, 0.5])
    assert sum(w for _, w in threshold_scale_intervals([det("circle", 0.1)], "single_object")) == pytest.approx(1)


def test_objects_above_their_threshold_score_the_partial_credit():
    found = [det("square", 0.95, x) for x in (0, 10, 20)]
    assert graded(found, counting(3)) == 1.0 == judge(found, counting(3)).partial
    assert graded(found[:2], counting(3)) == pytest.approx(judge(found[:2], counting(3)).partial)


def test_right_count_below_the_counting_threshold_earns_credit_in_proportion_to_confidence():
    # three squares at 0.6 of the 0.9 threshold: all counted for u < 2/3 (credit 1), none above (exclude holds: 1/2)
    found = [det("square", 0.6, x) for x in (0, 10, 20)]
    assert judge(found, counting(3)).partial == 0.5
    assert graded(found, counting(3)) == pytest.approx(2 / 3 * 1.0 + 1 / 3 * 0.5)


def test_credit_grows_with_the_confidence_of_an_object_below_its_threshold():
    values = [graded([det("circle", c)], {"tag": "single_object", "include": [{"class": "circle", "count": 1}]})
              for c in (0.05, 0.1, 0.2, 0.29, 0.31)]
    assert values == sorted(values) and values[-1] == 1.0 and values[0] < 0.2


def test_an_extra_low_confidence_object_costs_credit():
    right = [det("square", 0.95, x) for x in (0, 10)]
    assert graded(right + [det("square", 0.45, 20)], counting(2)) < graded(right, counting(2)) == 1.0


def test_colours_of_low_confidence_objects_are_judged_where_they_count():
    red, blue = det("circle", 0.15, 0, "red"), det("circle", 0.15, 0, "blue")
    metadata = parse_metadata(COLOUR)
    assert colour_needs([red], metadata) == {0: [red]}
    assert graded([red], COLOUR) > graded([blue], COLOUR)


def test_a_wrong_composition_stays_below_the_right_one_at_any_confidence():
    assert graded([det("circle", 0.2), det("circle", 0.2, 10)], two_object()) < graded(
        [det("circle", 0.2), det("square", 0.2, 10)], two_object())
