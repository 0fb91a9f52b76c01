"""Contract: every curl-able example request in protos/examples/ is a valid reward.v1.ScoreRequest that survives
JSON -> proto -> bytes -> proto -> JSON unchanged, and that the server codec decodes item by item."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from protos.reward.v1 import reward_pb2
from services.common.codec import JSON, decode_item, parse_score_request

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "protos" / "examples").glob("*.json"))


def test_examples_cover_raw_png_and_geneval_metadata_with_branch_ids():
    names = {path.name for path in EXAMPLES}
    assert {"score_raw.json", "score_png.json", "score_geneval.json"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_round_trips_json_proto_bytes_proto_json(path: Path):
    original = json.loads(path.read_text())
    message = json_format.Parse(path.read_text(), reward_pb2.ScoreRequest())
    wire = message.SerializeToString()
    again = reward_pb2.ScoreRequest.FromString(wire)
    assert again == message
    assert json_format.MessageToDict(again) == original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_decodes_every_item_with_the_server_codec(path: Path):
    request = parse_score_request(path.read_bytes(), JSON)
    decoded = [decode_item(item, index, max_image_pixels=4096 * 4096) for index, item in enumerate(request.items)]
    assert len(decoded) == len(request.items) > 0
    for item, scorer_input in zip(request.items, decoded):
        assert scorer_input.image.ndim == 3 and scorer_input.image.shape[2] == 3
        assert scorer_input.prompt == item.prompt


def test_geneval_example_carries_metadata_and_branch_ids():
    request = parse_score_request((EXAMPLES[0].parent / "score_geneval.json").read_bytes(), JSON)
    first = decode_item(request.items[0], 0, max_image_pixels=1 << 24)
    assert first.metadata["include"][0]["class"] == "square"
    assert request.items[0].branch.branch_step == 4 and request.items[1].branch.branch_step == -1
