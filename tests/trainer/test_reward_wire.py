"""The trainer's encoding of a query and decoding of replies, checked against the service's own codec."""
import numpy as np
import pytest

from protos.reward.v1 import reward_pb2
from services.common.codec import decode_item, parse_score_request
from trainer.rewards.backoff import backoff_s, retry_after_s
from trainer.rewards.spec import RetryPolicy
from trainer.rewards.wire import RewardItemError, build_score_request, parse_score_response


def test_request_carries_raw_pixels_losslessly_with_prompt_metadata_and_branch_ids():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    metadata = [{"tag": "counting", "include": [{"class": "cat", "count": 2}]}, None]
    branch = [None, {"group_id": 3, "seed": 1, "branch_step": 4, "sample_id": 2}]
    body = build_score_request(images, ["two cats", "a dog"], metadata, branch, first_index=10).SerializeToString()
    request = parse_score_request(body, "protobuf")
    decoded = [decode_item(item, i, max_image_pixels=10_000) for i, item in enumerate(request.items)]
    assert all(np.array_equal(d.image, images[i]) for i, d in enumerate(decoded))
    assert [d.prompt for d in decoded] == ["two cats", "a dog"]
    assert decoded[0].metadata == {"tag": "counting", "include": [{"class": "cat", "count": 2.0}]}
    assert decoded[1].metadata is None
    assert not request.items[0].HasField("branch")
    assert request.items[1].branch.branch_step == 4 and request.items[1].branch.sample_id == 2
    assert [item.item_id for item in request.items] == ["10", "11"]


def reply(*scores):
    return reward_pb2.ScoreResponse(scores=list(scores), model=reward_pb2.ModelInfo(name="m")).SerializeToString()


def test_reply_values_and_components_are_aligned_with_items():
    body = reply(reward_pb2.ItemScore(value=0.25, components={"mu": 1.0}, item_id="4"),
                 reward_pb2.ItemScore(value=0.75, item_id="5"))
    scores = parse_score_response(body, "r", first_index=4, count=2)
    assert scores.values.tolist() == [0.25, 0.75]
    assert scores.components["mu"][0] == 1.0 and np.isnan(scores.components["mu"][1])
    assert scores.model.name == "m"


def test_an_item_error_fails_loudly_naming_reward_item_and_message():
    body = reply(reward_pb2.ItemScore(value=0.5),
                 reward_pb2.ItemScore(error=reward_pb2.ItemError(code="invalid_image", message="items[1].image")))
    with pytest.raises(RewardItemError, match=r"reward 'geneval'.*item 8: invalid_image: items\[1\]\.image"):
        parse_score_response(body, "geneval", first_index=7, count=2)


def test_an_item_without_value_is_an_error_not_a_zero():
    with pytest.raises(RewardItemError, match="missing_value"):
        parse_score_response(reply(reward_pb2.ItemScore()), "r", first_index=0, count=1)


def test_a_reply_with_the_wrong_number_of_scores_is_rejected():
    with pytest.raises(ValueError, match="1 scores for 2 items"):
        parse_score_response(reply(reward_pb2.ItemScore(value=1.0)), "r", first_index=0, count=2)


def test_backoff_grows_geometrically_to_the_cap_with_jitter_below_the_nominal_wait():
    import random
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=1.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, nominal in [(0, 0.1), (1, 0.2), (2, 0.4), (5, 1.0)]:
        waits = [backoff_s(policy, attempt, rng) for _ in range(50)]
        assert all(nominal * 0.5 <= w <= nominal for w in waits)
        assert max(waits) - min(waits) > 0  # jitter spreads the waits


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date: no extra wait
