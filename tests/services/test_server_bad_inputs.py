"""Bad inputs get a clear 4xx naming the offending field, one bad item fails only itself, and the service keeps
answering afterwards. One real service process (the brightness test scorer) with small limits serves every case."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from protos.reward.v1 import reward_pb2
from services.common.codec import encoded_image, raw_image
from tests.support.service_process import running_service

MAX_PIXELS = 1_000_000
MAX_ITEMS = 4
MAX_BYTES = 3_000_000
PROTOBUF = {"content-type": "application/x-protobuf", "accept": "application/json"}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def good_item() -> reward_pb2.ScoreItem:
    return reward_pb2.ScoreItem(image=raw_image(np.full((8, 8, 3), 51, np.uint8)), prompt="grey")


def protobuf_body(*items: reward_pb2.ScoreItem) -> bytes:
    return reward_pb2.ScoreRequest(items=list(items)).SerializeToString()


def decompression_bomb() -> bytes:
    """A PNG of a few kB whose header says 4000x4000 (16 M pixels, 16x the service's limit)."""
    return png_bytes(np.zeros((4000, 4000), np.uint8))


@pytest.fixture(scope="module")
def service():
    with running_service("tests.support.test_scorers", "--max-image-pixels", str(MAX_PIXELS),
                         "--max-request-items", str(MAX_ITEMS), "--max-request-bytes", str(MAX_BYTES)) as s:
        yield s


@pytest.fixture
def still_answers(service):
    """After the case under test, a good request is still scored."""
    yield
    reply = httpx.post(service.url + "/v1/score", content=protobuf_body(good_item()), headers=PROTOBUF)
    assert reply.status_code == 200 and reply.json()["scores"][0]["value"] == pytest.approx(0.2)


def bad_item_request(item: reward_pb2.ScoreItem) -> tuple[bytes, dict[str, str]]:
    return protobuf_body(item), PROTOBUF


def raw_item(height: int, width: int, channels: int, pixels: bytes) -> reward_pb2.ScoreItem:
    return reward_pb2.ScoreItem(image=reward_pb2.Image(raw=reward_pb2.RawImage(
        height=height, width=width, channels=channels, pixels=pixels)), prompt="grey")


CASES = {
    "invalid_base64": (
        lambda: (json.dumps({"items": [{"image": {"encoded": {"data": "not*base64!"}}, "prompt": "x"}]}).encode(),
                 {"content-type": "application/json"}),
        400, "items[0].image.encoded.data"),
    "truncated_png": (
        lambda: bad_item_request(reward_pb2.ScoreItem(
            image=encoded_image(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[:400]),
            prompt="noise")),
        422, "items[0].image.encoded.data"),
    "raw_pixel_count_not_matching_shape": (
        lambda: bad_item_request(raw_item(8, 8, 3, bytes(100))), 422, "items[0].image.raw.pixels"),
    "zero_size_image": (lambda: bad_item_request(raw_item(0, 8, 3, b"")), 422, "items[0].image.raw"),
    "oversized_image": (lambda: bad_item_request(raw_item(1001, 1000, 1, bytes(1001 * 1000))), 422,
                        "items[0].image.raw"),
    "decompression_bomb": (
        lambda: bad_item_request(reward_pb2.ScoreItem(image=encoded_image(decompression_bomb()), prompt="x")),
        422, "items[0].image.encoded.data"),
    "more_items_than_allowed": (lambda: (protobuf_body(*[good_item()] * (MAX_ITEMS + 1)), PROTOBUF), 413, "items"),
    "body_larger_than_allowed": (lambda: (protobuf_body(raw_item(1000, 1000, 3, bytes(3_000_000))), PROTOBUF), 413,
                                 "body"),
    "missing_prompt": (
        lambda: bad_item_request(reward_pb2.ScoreItem(image=raw_image(np.zeros((4, 4, 3), np.uint8)))), 422,
        "items[0].prompt"),
    "missing_image": (lambda: bad_item_request(reward_pb2.ScoreItem(prompt="x")), 422, "items[0].image"),
    "wrong_content_type": (lambda: (b"hello", {"content-type": "text/plain"}), 415, "Content-Type"),
    "wrong_field_type_in_json": (
        lambda: (json.dumps({"items": [{"image": {"raw": {"height": "tall"}}, "prompt": "x"}]}).encode(),
                 {"content-type": "application/json"}),
        400, "items[0].image.raw.height"),
    "unknown_json_field": (lambda: (b'{"itemz": []}', {"content-type": "application/json"}), 400, ""),
    "malformed_json": (lambda: (b'{"items": [', {"content-type": "application/json"}), 400, ""),
    "garbage_protobuf": (lambda: (b"\xff\xff\xff\xff", PROTOBUF), 400, ""),
    "no_items": (lambda: (b"{}", {"content-type": "application/json"}), 400, "items"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_a_4xx_naming_the_field(service, still_answers, case):
    make, status, field = CASES[case]
    body, headers = make()
    response = httpx.post(service.url + "/v1/score", content=body, headers={**headers, "accept": "application/json"})
    assert response.status_code == status, response.text
    error = json_format.Parse(response.text, reward_pb2.ErrorResponse())
    assert error.code and error.message
    assert error.field == field
    if field:
        assert field in error.message


def test_one_corrupt_image_fails_only_its_own_item(service):
    corrupt = reward_pb2.ScoreItem(image=encoded_image(b"\x89PNG\r\n\x1a\n" + bytes(40)), prompt="broken")
    response = httpx.post(service.url + "/v1/score", content=protobuf_body(good_item(), corrupt, good_item()),
                          headers=PROTOBUF)
    assert response.status_code == 200
    scores = response.json()["scores"]
    assert scores[0]["value"] == pytest.approx(0.2) and scores[2]["value"] == pytest.approx(0.2)
    assert "value" not in scores[1]
    assert scores[1]["error"]["code"] == "invalid_image"
    assert scores[1]["error"]["message"].startswith("items[1].image.encoded.data")


def test_png_jpeg_and_webp_are_decoded(service):
    image = np.full((16, 16, 3), 51, np.uint8)
    items = []
    for kind in ("PNG", "JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=kind, quality=100) if kind != "PNG" else \
            Image.fromarray(image).save(buffer, format=kind)
        items.append(reward_pb2.ScoreItem(image=encoded_image(buffer.getvalue()), prompt="grey"))
    scores = httpx.post(service.url + "/v1/score", content=protobuf_body(*items), headers=PROTOBUF).json()["scores"]
    assert [s["value"] for s in scores] == pytest.approx([0.2, 0.2, 0.2], abs=0.01)


def test_grey_and_rgba_raw_images_are_accepted(service):
    grey = raw_item(4, 4, 1, bytes([51] * 16))
    rgba = raw_item(4, 4, 4, bytes([51, 51, 51, 0] * 16))
    scores = httpx.post(service.url + "/v1/score", content=protobuf_body(grey, rgba), headers=PROTOBUF).json()["scores"]
    assert [s["value"] for s in scores] == pytest.approx([0.2, 0.2])


def test_base64_json_image_is_scored_like_the_raw_one(service):
    body = {"items": [{"image": {"encoded": {"data": base64.b64encode(png_bytes(np.full((8, 8, 3), 51, np.uint8)))
                                            .decode()}}, "prompt": "grey"}]}
    reply = httpx.post(service.url + "/v1/score", json=body)
    assert reply.status_code == 200 and reply.json()["scores"][0]["value"] == pytest.approx(0.2)
