"""The serving core in a real uvicorn process (`python -m tests.support.test_scorers`, a deterministic scorer whose
value is mean brightness / 255): both encodings, coalescing, queue full, deadlines, auth, drain, health, metrics."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from protos.reward.v1 import reward_pb2
from services.common.codec import raw_image
from tests.support.service_process import REPO_ROOT, running_service

SCORER = "tests.support.test_scorers"
PROTOBUF = {"content-type": "application/x-protobuf", "accept": "application/x-protobuf"}
JSON = {"content-type": "application/json", "accept": "application/json"}


def request_of(*brightness: int, deadline_ms: int = 0, request_id: str = "") -> reward_pb2.ScoreRequest:
    """A request of uniform 8x8 grey images, one per brightness value."""
    items = [reward_pb2.ScoreItem(image=raw_image(np.full((8, 8, 3), level, np.uint8)), prompt="grey",
                                  item_id=f"item-{index}") for index, level in enumerate(brightness)]
    return reward_pb2.ScoreRequest(items=items, deadline_ms=deadline_ms, request_id=request_id)


def post_protobuf(url: str, request: reward_pb2.ScoreRequest, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/score", content=request.SerializeToString(), headers={**PROTOBUF, **headers},
                      timeout=30)


def parse_reply(response: httpx.Response) -> reward_pb2.ScoreResponse:
    assert response.status_code == 200, response.text
    return reward_pb2.ScoreResponse.FromString(response.content)


def parse_error(response: httpx.Response) -> reward_pb2.ErrorResponse:
    return json_format.Parse(response.text, reward_pb2.ErrorResponse())


async def concurrent_posts(url: str, requests: list[reward_pb2.ScoreRequest]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(client.post(url + "/v1/score", content=r.SerializeToString(), headers=PROTOBUF)
                                      for r in requests))


def metric_value(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def service():
    with running_service(SCORER, "--forward-sleep-ms", "200", "--max-batch-items", "16", "--max-wait-ms", "50") as s:
        yield s


def test_protobuf_request_is_scored_in_order_with_ids_echoed(service):
    reply = parse_reply(post_protobuf(service.url, request_of(0, 51, 255, request_id="r-1")))
    assert [s.value for s in reply.scores] == pytest.approx([0.0, 0.2, 1.0])
    assert [s.item_id for s in reply.scores] == ["item-0", "item-1", "item-2"]
    assert reply.request_id == "r-1" and reply.model.name == "brightness"


def test_json_and_protobuf_requests_get_identical_scores(service):
    request = request_of(10, 128, 250)
    by_protobuf = parse_reply(post_protobuf(service.url, request))
    by_json = httpx.post(service.url + "/v1/score", content=json_format.MessageToJson(request), headers=JSON)
    assert by_json.headers["content-type"] == "application/json"
    json_reply = json_format.Parse(by_json.text, reward_pb2.ScoreResponse())
    assert [s.value for s in json_reply.scores] == [s.value for s in by_protobuf.scores]


def test_accept_header_picks_the_reply_encoding(service):
    request = request_of(100)
    as_json = post_protobuf(service.url, request, accept="application/json")
    assert as_json.headers["content-type"] == "application/json"
    assert json_format.Parse(as_json.text, reward_pb2.ScoreResponse()).scores[0].value == pytest.approx(100 / 255)


def test_queue_and_compute_times_come_back_in_headers_and_body(service):
    response = post_protobuf(service.url, request_of(1, 2))
    reply = parse_reply(response)
    assert float(response.headers["x-compute-time"]) == pytest.approx(reply.compute_ms, abs=1e-2)
    assert float(response.headers["x-queue-time"]) == pytest.approx(reply.queue_ms, abs=1e-2)
    assert reply.compute_ms >= 200.0  # the scorer sleeps 200 ms per forward


def test_concurrent_requests_are_coalesced_into_fewer_forwards(service):
    forwards_before = metric_value(service.url, "reward_batch_size_items_count")
    replies = [parse_reply(r) for r in asyncio.run(concurrent_posts(service.url, [request_of(i) for i in range(16)]))]
    forwards = {s.components["forward_index"] for reply in replies for s in reply.scores}
    assert len(forwards) <= 4, f"16 concurrent one-item requests ran in {len(forwards)} forwards"
    assert [reply.scores[0].value for reply in replies] == pytest.approx([i / 255 for i in range(16)])
    assert metric_value(service.url, "reward_batch_size_items_count") - forwards_before == len(forwards)


def test_info_health_metrics_and_docs_answer(service):
    info = httpx.get(service.url + "/v1/info").json()
    assert info["name"] == "brightness" and info["maxBatchItems"] == 16 and info["components"]
    assert httpx.get(service.url + "/health/live").status_code == 200
    assert httpx.get(service.url + "/health/ready").json() == {"status": "ready"}
    metrics = httpx.get(service.url + "/metrics").text
    for family in ("reward_request_duration_seconds", "reward_queue_duration_seconds",
                   "reward_inference_duration_seconds", "reward_batch_size_items", "reward_queue_depth_items",
                   "reward_rejections_total"):
        assert family in metrics
    assert "/v1/score" in httpx.get(service.url + "/openapi.json").json()["paths"]
    assert httpx.get(service.url + "/docs").status_code == 200


def test_full_queue_answers_429_with_retry_after():
    with running_service(SCORER, "--forward-sleep-ms", "400", "--max-batch-items", "1", "--max-queue-items", "2",
                         "--max-wait-ms", "0") as service:
        responses = asyncio.run(concurrent_posts(service.url, [request_of(i) for i in range(8)]))
        statuses = sorted(r.status_code for r in responses)
        assert 429 in statuses and set(statuses) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert reward_pb2.ErrorResponse.FromString(refused.content).code == "queue_full"
        assert metric_value(service.url, 'reward_rejections_total{reason="queue_full"}') == statuses.count(429)
        assert post_protobuf(service.url, request_of(5)).status_code == 200


def test_request_past_its_deadline_answers_504_and_the_service_still_answers():
    with running_service(SCORER, "--forward-sleep-ms", "800") as service:
        late = post_protobuf(service.url, request_of(1, deadline_ms=150))
        assert late.status_code == 504
        assert reward_pb2.ErrorResponse.FromString(late.content).code == "deadline_exceeded"
        assert post_protobuf(service.url, request_of(2)).status_code == 200


def test_default_deadline_comes_from_the_environment():
    with running_service(SCORER, "--forward-sleep-ms", "800", env={"REWARD_DEFAULT_DEADLINE_MS": "150"}) as service:
        assert post_protobuf(service.url, request_of(1)).status_code == 504
        assert post_protobuf(service.url, request_of(1, deadline_ms=5000)).status_code == 200


def test_api_key_on_refuses_missing_and_wrong_keys_and_accepts_the_right_one():
    with running_service(SCORER, env={"REWARD_API_KEY": "s3cret"}) as service:
        assert post_protobuf(service.url, request_of(1)).status_code == 401
        wrong = post_protobuf(service.url, request_of(1), authorization="Bearer nope")
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(service.url + "/v1/info").status_code == 401
        assert post_protobuf(service.url, request_of(1), authorization="Bearer s3cret").status_code == 200
        assert httpx.get(service.url + "/health/ready").status_code == 200  # probes need no key


def test_api_key_off_accepts_requests_without_authorization(service):
    assert post_protobuf(service.url, request_of(1)).status_code == 200


def test_sigterm_drains_in_flight_work_then_exits_cleanly():
    with running_service(SCORER, "--forward-sleep-ms", "1500", "--max-wait-ms", "0") as service:
        outcome: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: outcome.update(reply=post_protobuf(service.url, request_of(9, 99))))
        worker.start()
        deadline = time.monotonic() + 5
        while metric_value(service.url, "reward_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the request is admitted (past the draining check) once it counts as in flight
        service.process.terminate()  # SIGTERM
        time.sleep(0.2)
        ready = httpx.get(service.url + "/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = post_protobuf(service.url, request_of(1))
        assert refused.status_code == 503 and refused.headers["retry-after"]
        worker.join(10)
        reply = parse_reply(outcome["reply"])
        assert [s.value for s in reply.scores] == pytest.approx([9 / 255, 99 / 255])
        assert service.process.wait(10) == 0
        assert "drained (all work finished)" in service.log()


def test_scorer_crash_fails_the_items_of_that_forward_and_the_service_goes_on(service):
    request = request_of(10)
    request.items[0].prompt = "raise"
    reply = parse_reply(post_protobuf(service.url, request))
    assert not reply.scores[0].HasField("value")
    assert reply.scores[0].error.code == "scorer_error" and "crashed on purpose" in reply.scores[0].error.message
    assert parse_reply(post_protobuf(service.url, request_of(51))).scores[0].value == pytest.approx(0.2)


def test_failed_warm_up_forward_exits_with_status_1():
    result = subprocess.run([sys.executable, "-m", SCORER, "--fail-warmup", "--port", "0"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "start-up failed" in result.stderr and "warm-up forward failed" in result.stderr
