"""GenEval's rules (strict) and the fixed Flow-GRPO partial credit, on hand-made detections."""
import pytest

from services.geneval.detections import Detection
from services.geneval.scoring import (
    InvalidMetadataError,
    ScoringConfig,
    colour_targets,
    evaluate,
    parse_metadata,
    relative_position,
    select_detections,
    summarize,
)


def det(class_name, box=(0, 0, 10, 10), confidence=0.95, color=None):
    return Detection(class_name=class_name, confidence=confidence, box=tuple(float(v) for v in box), color=color)


def judge(detections, raw_metadata, config=ScoringConfig()):
    """Select, read colours off the detections (as the shapes backend provides them), evaluate."""
    metadata = parse_metadata(raw_metadata)
    selected = select_detections(detections, metadata.tag, config)
    colours = {i: [d.color for d in ds] for i, ds in colour_targets(selected, metadata).items()}
    return evaluate(selected, metadata, colours, config)


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}


def counting(n, class_name="square"):
    return {"tag": "counting", "include": [{"class": class_name, "count": n}],
            "exclude": [{"class": class_name, "count": n + 1}]}


def two_object(a="circle", b="square"):
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}


def position(relation, a="circle", b="square"):
    # GenEval: "a photo of a {a} {relation} a {b}": the target (b) is clause 0
    return {"tag": "position", "include": [{"class": b, "count": 1},
                                           {"class": a, "count": 1, "position": [relation, 0]}]}


def test_single_object_present_is_correct_with_full_credit():
    result = judge([det("circle")], SINGLE)
    assert result.strict and result.partial == 1.0


def test_single_object_absent_is_wrong_with_no_credit():
    result = judge([det("square")], SINGLE)
    assert not result.strict and result.partial == 0.0


def test_confidence_must_be_strictly_above_threshold():
    assert not judge([det("circle", confidence=0.3)], SINGLE).strict
    assert judge([det("circle", confidence=0.3001)], SINGLE).strict


def test_counting_uses_the_higher_threshold():
    three_sure_one_unsure = [det("square", confidence=0.95)] * 3 + [det("square", confidence=0.85)]
    assert judge(three_sure_one_unsure, counting(3)).strict  # 0.85 is not above 0.9: three squares
    four = {"tag": "two_object", "include": [{"class": "square", "count": 4}]}
    assert judge(three_sure_one_unsure, four).strict  # other tags keep 0.3: four squares


def test_counting_exact_number_is_correct():
    result = judge([det("square")] * 3, counting(3))
    assert result.strict and result.partial == 1.0


def test_counting_one_too_many_fails_by_the_exclude_clause():
    result = judge([det("square")] * 4, counting(3))
    assert not result.strict
    include, exclude = result.clauses
    assert include.strict and not exclude.strict
    # count term 1 - 1/3, exclude term 0
    assert result.partial == pytest.approx((2 / 3 + 0.0) / 2)


def test_counting_one_too_few_fails_with_count_credit():
    result = judge([det("square")] * 2, counting(3))
    assert not result.strict
    assert result.partial == pytest.approx((2 / 3 + 1.0) / 2)


def test_count_credit_is_clipped_at_zero_when_far_too_many():
    result = judge([det("circle")] * 3, SINGLE)  # 1 - |1 - 3| / 1 = -1 in the reward server
    assert result.strict  # GenEval: at least one circle, no exclude clause
    assert result.partial == 0.0


def test_at_most_sixteen_detections_per_class():
    selected = select_detections([det("square")] * 20, "two_object")
    assert len(selected["square"]) == 16


def test_selection_orders_by_confidence():
    selected = select_detections([det("circle", confidence=c) for c in (0.4, 0.9, 0.6)], "single_object")
    assert [d.confidence for d in selected["circle"]] == [0.9, 0.6, 0.4]


def test_overlapping_boxes_are_kept_by_default_as_official():
    selected = select_detections([det("square"), det("square")], "counting")
    assert len(selected["square"]) == 2


def test_nms_threshold_below_one_suppresses_overlaps():
    config = ScoringConfig(nms_threshold=0.5)
    boxes = [det("square", (0, 0, 10, 10)), det("square", (1, 1, 11, 11), 0.9), det("square", (30, 30, 40, 40))]
    assert len(select_detections(boxes, "counting", config)["square"]) == 2


def test_two_objects_both_present():
    assert judge([det("circle"), det("square", (20, 20, 30, 30))], two_object()).strict


def test_two_objects_one_missing_gets_half_credit():
    result = judge([det("circle")], two_object())
    assert not result.strict and result.partial == 0.5


def test_colour_right():
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    result = judge([det("circle", color="red")], meta)
    assert result.strict and result.partial == 1.0


def test_colour_wrong_keeps_count_credit():
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    result = judge([det("circle", color="blue")], meta)
    assert not result.strict and result.partial == 0.5
    assert result.clauses[0].found_colors == ["blue"]


def test_colour_is_judged_on_the_most_confident_object_only():
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    detections = [det("circle", confidence=0.9, color="blue"), det("circle", confidence=0.8, color="red")]
    assert not judge(detections, meta).strict


def test_colour_attribution_correct():
    meta = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                             {"class": "square", "count": 1, "color": "blue"}]}
    assert judge([det("circle", color="red"), det("square", (20, 0, 30, 10), color="blue")], meta).strict


def test_colour_attribution_swapped_colours_is_wrong():
    meta = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                             {"class": "square", "count": 1, "color": "blue"}]}
    result = judge([det("circle", color="blue"), det("square", (20, 0, 30, 10), color="red")], meta)
    assert not result.strict
    assert result.partial == pytest.approx(0.5)  # both counts right, both colours wrong


def test_two_clauses_of_the_same_class_share_the_top_object_as_official():
    # GenEval judges every clause on its class's most confident detections: "a red circle and a blue circle"
    # can never be correct, because both clauses look at the same (most confident) circle.
    meta = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                             {"class": "circle", "count": 1, "color": "blue"}]}
    detections = [det("circle", confidence=0.9, color="red"), det("circle", (20, 0, 30, 10), 0.8, color="blue")]
    result = judge(detections, meta)
    assert not result.strict
    assert result.clauses[0].strict and not result.clauses[1].strict


def test_position_left_of():
    result = judge([det("square", (50, 0, 60, 10)), det("circle", (0, 0, 10, 10))], position("left of"))
    assert result.strict and result.partial == 1.0


def test_position_wrong_side_fails_and_counts_once_in_partial_credit():
    result = judge([det("square", (0, 0, 10, 10)), det("circle", (50, 0, 60, 10))], position("left of"))
    assert not result.strict
    assert result.clauses[1].found_relations == [["right of"]]
    # terms: square count 1, circle count 1, position 0 (the reward server added 0 and 1: 0.75)
    assert result.partial == pytest.approx(2 / 3)


def test_position_exact_margin_boundary_is_no_relation():
    # equal widths 10: margin 0.1 * (10 + 10) = 2; offset 4 leaves 2, i.e. dx = -2/4 = -0.5, not below -0.5
    assert relative_position((0, 0, 10, 10), (4, 0, 14, 10)) == set()
    assert relative_position((0, 0, 10, 10), (4.01, 0, 14.01, 10)) == {"left of"}


def test_position_inside_margin_is_no_relation():
    assert relative_position((0, 0, 10, 10), (1.9, 1.9, 11.9, 11.9)) == set()


def test_position_diagonal_gives_two_relations():
    assert relative_position((0, 0, 10, 10), (40, 40, 50, 50)) == {"left of", "above"}


def test_position_vertical_relations_follow_image_coordinates():
    assert relative_position((0, 0, 10, 10), (0, 40, 10, 50)) == {"above"}
    assert relative_position((0, 40, 10, 50), (0, 0, 10, 10)) == {"below"}


def test_position_without_target_fails():
    result = judge([det("circle", (0, 0, 10, 10))], position("left of"))
    assert not result.strict
    assert result.clauses[1].reason.startswith("no target")
    assert result.partial == pytest.approx((0 + 1 + 0) / 3)


def test_exclude_clause_of_another_class_makes_image_wrong():
    meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
            "exclude": [{"class": "square", "count": 1}]}
    assert judge([det("circle")], meta).strict
    result = judge([det("circle"), det("square", (20, 20, 30, 30))], meta)
    assert not result.strict and result.partial == 0.5


def test_detail_is_json_serialisable_and_names_every_clause():
    import json

    result = judge([det("square")] * 4, counting(3))
    detail = json.loads(json.dumps(result.detail()))
    assert [c["kind"] for c in detail["clauses"]] == ["include", "exclude"]
    assert detail["reasons"] == ["expected square<4, found 4"]


def test_summary_overall_is_the_mean_over_tags_not_images():
    summary = summarize(["single_object"] * 3 + ["counting"], [True, True, True, False])
    assert summary == {"single_object": 1.0, "counting": 0.0, "overall": 0.5}


def test_metadata_numbers_may_arrive_as_floats():
    meta = parse_metadata({"tag": "position", "include": [{"class": "a", "count": 1.0},
                                                          {"class": "b", "count": 2.0, "position": ["above", 0.0]}]})
    assert meta.include[1].count == 2 and meta.include[1].position == ("above", 0)


@pytest.mark.parametrize("raw, field", [
    ({"tag": "nonsense", "include": [{"class": "circle", "count": 1}]}, "metadata.tag"),
    ({"tag": "counting", "include": []}, "metadata.include"),
    ({"tag": "counting", "include": [{"class": "circle", "count": 1.5}]}, "metadata.include[0].count"),
    ({"tag": "counting", "include": [{"class": "circle", "count": 0}]}, "metadata.include[0].count"),
    ({"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["above", 0]}]},
     "metadata.include[0].position[1]"),
    ({"tag": "position", "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1,
                                                                  "position": ["near", 0]}]},
     "metadata.include[1].position[0]"),
    ({"tag": "counting", "include": [{"class": "dog", "count": 1}]}, "metadata.include[0].class"),
    ({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "mauve"}]}, "metadata.include[0].color"),
])
def test_invalid_metadata_names_the_field(raw, field):
    with pytest.raises(InvalidMetadataError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_metadata(raw, classes=("circle", "a", "b"), colors=("red",))


def test_colour_credit_is_the_share_of_counted_objects_with_the_colour():
    meta = {"tag": "colors", "include": [{"class": "square", "count": 2, "color": "red"}]}
    result = judge([det("square", color="red"), det("square", (20, 0, 30, 10), color="green")], meta)
    assert not result.strict
    assert result.partial == pytest.approx((1.0 + 0.5) / 2)


def test_colour_is_not_credited_when_the_count_is_wrong():
    meta = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}]}
    result = judge([det("square", color="red"), det("square", (20, 0, 30, 10), color="red")], meta)
    assert result.strict  # GenEval: at least one square, the most confident is red
    assert result.partial == pytest.approx((0.0 + 0.0) / 2)  # count term 1 - 1/1 = 0; colour check not reached
