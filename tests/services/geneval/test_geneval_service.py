"""`python -m services.geneval --detector shapes` as a real process, scoring rendered images over HTTP."""
import base64

import httpx
import numpy as np
import pytest

from protos.reward.v1 import reward_pb2
from tests.support.service_process import running_service
from trainer.shapes_world import prompts
from trainer.shapes_world.render import RenderConfig

pytestmark = pytest.mark.slow


def raw_json(image):
    return {"raw": {"height": image.shape[0], "width": image.shape[1], "channels": 3,
                    "pixels": base64.b64encode(image.tobytes()).decode()}}


@pytest.fixture(scope="module")
def service():
    with running_service("services.geneval", "--detector", "shapes") as running:
        yield running


def test_info_names_the_detector_and_components(service):
    info = httpx.get(service.url + "/v1/info").json()
    assert info["name"] == "geneval"
    assert info["model"].startswith("shapes:")
    assert info["components"] == ["strict", "partial"]


def test_json_request_scores_rendered_scenes(service):
    rng = np.random.default_rng(0)
    right = prompts.position("circle", "left of", "square")
    scene = prompts.scene_for(right, rng)
    wrong = prompts.position("circle", "right of", "square")  # the same image, asked the other way round
    body = {"items": [
        {"image": raw_json(scene.image), "prompt": right["prompt"], "metadata": right, "itemId": "right"},
        {"image": raw_json(scene.image), "prompt": wrong["prompt"], "metadata": wrong, "itemId": "wrong"},
    ]}
    reply = httpx.post(service.url + "/v1/score", json=body, timeout=30).json()
    first, second = reply["scores"]
    assert first["itemId"] == "right" and first["value"] == 1.0
    assert first["components"] == {"strict": 1.0, "partial": 1.0}
    assert second["components"]["strict"] == 0.0
    assert second["value"] == pytest.approx(2 / 3)  # partial credit: both objects found, position wrong
    assert second["detail"]["clauses"][1]["found_relations"] == [["left of"]]


def test_protobuf_request_scores_a_counting_scene(service):
    rng = np.random.default_rng(1)
    metadata = prompts.counting("triangle", 3)
    scene = prompts.scene_for(metadata, rng, RenderConfig(image_size=48))
    request = reward_pb2.ScoreRequest()
    item = request.items.add(prompt=metadata["prompt"])
    item.image.raw.height, item.image.raw.width, item.image.raw.channels = 48, 48, 3
    item.image.raw.pixels = scene.image.tobytes()
    item.metadata.update(metadata)
    reply = httpx.post(service.url + "/v1/score", content=request.SerializeToString(), timeout=30,
                       headers={"Content-Type": "application/x-protobuf", "Accept": "application/x-protobuf"})
    scores = reward_pb2.ScoreResponse.FromString(reply.content).scores
    assert scores[0].value == 1.0 and scores[0].components["strict"] == 1.0


def test_invalid_metadata_fails_only_that_item(service):
    image = prompts.scene_for(prompts.single_object("square"), np.random.default_rng(2)).image
    body = {"items": [
        {"image": raw_json(image), "prompt": "a dragon",
         "metadata": {"tag": "single_object", "include": [{"class": "dragon", "count": 1}]}},
        {"image": raw_json(image), "prompt": "a square", "metadata": prompts.single_object("square")},
    ]}
    first, second = httpx.post(service.url + "/v1/score", json=body, timeout=30).json()["scores"]
    assert "metadata.include[0].class" in first["error"]["message"] and "value" not in first
    assert second["value"] == 1.0
