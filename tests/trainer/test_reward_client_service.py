"""The reward client against real reward service processes on 127.0.0.1 (no HTTP mocks).

Services: tests.support.test_scorers (brightness = mean/255) and tests.trainer.test_reward_contrast_scorer
(contrast = std/255), each a real `python -m` uvicorn process. Expected rewards are computed locally from the
same pixels; the wire carries float32, hence rtol 1e-6.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.support.service_process import REPO_ROOT, free_port, running_service, wait_ready
from tests.trainer.test_reward_contrast_scorer import contrast
from trainer.algorithms.base import RewardQuery
from trainer.rewards.mixer import group_normalize
from trainer.rewards.reward_set import RewardSet
from trainer.rewards.scoring_pool import RewardClient
from trainer.rewards.service_client import RewardServiceError, RewardUnavailableError
from trainer.rewards.spec import MixingMode, RetryPolicy, RewardSetConfig, RewardSpec

BRIGHTNESS = "tests.support.test_scorers"
CONTRAST = "tests.trainer.test_reward_contrast_scorer"
FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=30.0)

pytestmark = pytest.mark.timeout(120)


def make_query(count: int, seed: int = 0, group_size: int = 4) -> RewardQuery:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(count, 8, 8, 3), dtype=np.uint8))
    return RewardQuery(images=images, prompts=[f"prompt {i // group_size}" for i in range(count)],
                       metadata=[{"tag": "single_object"} if i % 2 else None for i in range(count)],
                       branch=[{"group_id": i // group_size, "seed": 0, "branch_step": -1, "sample_id": i}
                               for i in range(count)],
                       group=torch.arange(count) // group_size)


def brightness_of(query: RewardQuery) -> torch.Tensor:
    images = query.images.numpy()
    return torch.tensor([float(np.mean(image)) / 255.0 for image in images], dtype=torch.float64)


def contrast_of(query: RewardQuery) -> torch.Tensor:
    return torch.tensor([contrast(image) for image in query.images.numpy()], dtype=torch.float64)


def client_for(*specs: RewardSpec, mixing=MixingMode.SUM_THEN_NORMALIZE, retry=FAST_RETRY) -> RewardClient:
    return RewardClient(RewardSet(RewardSetConfig(rewards=specs, mixing=mixing, retry=retry)), seed=0)


def metric(service_url: str, name: str, **labels: str) -> float:
    """A counter/histogram-count sample from the service's /metrics (0 when absent)."""
    text = httpx.get(service_url + "/metrics").text
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def start_on_port(module: str, port: int, *args: str, wait: bool = True) -> subprocess.Popen:
    """Start a service process on a chosen port (so a restarted one comes back at the same URL)."""
    log_path = Path(tempfile.mkdtemp(prefix="reward-client-test-")) / "service.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   stdout=log_file, stderr=subprocess.STDOUT)
    if wait:
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, log_path, timeout_s=60)
        except BaseException:
            process.kill()
            process.wait()
            raise
    return process


@contextlib.contextmanager
def service_on_port(module: str, port: int, *args: str, wait: bool = True):
    """start_on_port for the length of a block; the process is killed at the end."""
    process = start_on_port(module, port, *args, wait=wait)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def brightness():
    with running_service(BRIGHTNESS, "--max-batch-items", "3") as service:
        yield service


@pytest.fixture(scope="module")
def contrast_service():
    with running_service(CONTRAST, "--max-batch-items", "4") as service:
        yield service


def two_reward_client(brightness, contrast_service, mixing) -> RewardClient:
    return client_for(RewardSpec(name="brightness", urls=[brightness.url], weight=0.7),
                      RewardSpec(name="contrast", urls=[contrast_service.url], weight=-2.0), mixing=mixing)


def test_two_rewards_sum_then_normalize_equals_the_weighted_sum(brightness, contrast_service):
    query = make_query(8)
    with two_reward_client(brightness, contrast_service, MixingMode.SUM_THEN_NORMALIZE) as client:
        mixed = client.score(query)
    torch.testing.assert_close(mixed.raw["brightness"], brightness_of(query), rtol=1e-6, atol=0)
    torch.testing.assert_close(mixed.raw["contrast"], contrast_of(query), rtol=1e-6, atol=0)
    expected = 0.7 * brightness_of(query) - 2.0 * contrast_of(query)
    torch.testing.assert_close(mixed.mixed, expected, rtol=1e-5, atol=1e-7)


def test_two_rewards_normalize_then_sum_equals_weighted_group_normalised_rewards(brightness, contrast_service):
    query = make_query(8)
    with two_reward_client(brightness, contrast_service, MixingMode.NORMALIZE_THEN_SUM) as client:
        mixed = client.score(query)
    expected = (0.7 * group_normalize(mixed.raw["brightness"], query.group, 1e-4)
                - 2.0 * group_normalize(mixed.raw["contrast"], query.group, 1e-4))
    torch.testing.assert_close(mixed.mixed, expected, rtol=1e-12, atol=1e-12)
    for name, reference in (("brightness", brightness_of(query)), ("contrast", contrast_of(query))):
        torch.testing.assert_close(mixed.raw[name], reference, rtol=1e-6, atol=0)
    assert not torch.allclose(mixed.mixed, 0.7 * mixed.raw["brightness"] - 2.0 * mixed.raw["contrast"])


def test_requests_are_chunked_to_the_services_max_batch_items(brightness):
    before = metric(brightness.url, "reward_request_duration_seconds_count", status="200")
    with client_for(RewardSpec(name="brightness", urls=[brightness.url])) as client:
        mixed = client.score(make_query(8))
    assert mixed.service_stats["brightness"]["requests"] == 3  # 3 + 3 + 2 items
    assert metric(brightness.url, "reward_request_duration_seconds_count", status="200") - before == 3


def test_each_services_model_info_is_exposed(brightness, contrast_service):
    with two_reward_client(brightness, contrast_service, MixingMode.SUM_THEN_NORMALIZE) as client:
        info = client.model_info()
        mixed = client.score(make_query(4))
    assert info["brightness"]["name"] == "brightness" and info["brightness"]["max_batch_items"] == 3
    assert info["contrast"]["description"] == "pixel std / 255 (a test scorer)"
    assert mixed.model_info["contrast"]["max_batch_items"] == 4
    assert mixed.model_info["brightness"]["model"] == "tests.support.test_scorers.BrightnessScorer"


def test_submit_returns_before_scoring_finishes_so_it_overlaps_the_next_rollout():
    with running_service(BRIGHTNESS, "--forward-sleep-ms", "800") as slow:
        with client_for(RewardSpec(name="brightness", urls=[slow.url])) as client:
            query = make_query(4)
            handle = client.submit(query)
            submitted_while_scoring = not handle.done()
            query.images.zero_()  # the caller may reuse its buffers: the client scored its own copy
            mixed = handle.result()
    assert submitted_while_scoring
    assert mixed.raw["brightness"].min() > 0


def test_replicas_share_the_load(brightness):
    with running_service(BRIGHTNESS, "--max-batch-items", "3") as second:
        before = [metric(s.url, "reward_request_duration_seconds_count", status="200") for s in (brightness, second)]
        with client_for(RewardSpec(name="brightness", urls=[brightness.url, second.url])) as client:
            query = make_query(12)
            mixed = client.score(query)
        after = [metric(s.url, "reward_request_duration_seconds_count", status="200") for s in (brightness, second)]
    served = [a - b for a, b in zip(after, before)]
    assert sum(served) == 4 and min(served) >= 1
    torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)


def test_queue_full_429_is_retried_after_retry_after():
    with running_service(BRIGHTNESS, "--max-batch-items", "2", "--max-queue-items", "2",
                         "--forward-sleep-ms", "300") as busy:
        spec = RewardSpec(name="brightness", urls=[busy.url], max_in_flight=8)
        with client_for(spec) as client:
            query = make_query(12)
            mixed = client.score(query)
        rejected = metric(busy.url, "reward_rejections_total", reason="queue_full")
    assert rejected >= 1
    assert mixed.service_stats["brightness"]["retries"] >= rejected
    torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)


def test_a_loading_service_answering_503_is_retried_until_ready():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with service_on_port(BRIGHTNESS, port, "--forward-sleep-ms", "2000", wait=False) as process:
        while True:  # bound and answering, still in its warm-up forward
            assert process.poll() is None
            time.sleep(0.02)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                    break
        assert httpx.get(url + "/health/ready").status_code == 503
        with client_for(RewardSpec(name="brightness", urls=[url])) as client:
            query = make_query(2)
            mixed = client.score(query)
    assert mixed.service_stats["brightness"]["retries"] >= 1
    torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)


def test_a_killed_service_that_restarts_is_retried_and_its_info_is_read_again():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with client_for(RewardSpec(name="brightness", urls=[url])) as client:
        with service_on_port(BRIGHTNESS, port, "--max-batch-items", "4") as first:
            assert client.score(make_query(8)).service_stats["brightness"]["requests"] == 2
            first.send_signal(signal.SIGKILL)
            first.wait()
        query = make_query(8, seed=1)
        handle = client.submit(query)  # the service is down now: connection refused until it is back
        restarted: list[subprocess.Popen] = []
        starter = threading.Timer(1.0, lambda: restarted.append(
            start_on_port(BRIGHTNESS, port, "--max-batch-items", "2")))
        starter.start()
        try:
            mixed = handle.result(timeout=60)
            starter.join()
            assert mixed.service_stats["brightness"]["retries"] >= 1
            torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)
            assert mixed.model_info["brightness"]["max_batch_items"] == 2
            # /v1/info was read again after the reconnection: the next query is chunked to the new limit.
            assert client.score(make_query(8)).service_stats["brightness"]["requests"] == 4
        finally:
            starter.join()
            for process in restarted:
                process.kill()
                process.wait()


def test_a_reward_that_stays_down_fails_with_a_clear_error(brightness):
    dead_url = f"http://127.0.0.1:{free_port()}"
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=1.0)
    with client_for(RewardSpec(name="brightness", urls=[brightness.url]),
                    RewardSpec(name="pickscore", urls=[dead_url]), retry=retry) as client:
        with pytest.raises(RewardUnavailableError) as failure:
            client.score(make_query(4))
    message = str(failure.value)
    assert "reward 'pickscore' is unavailable" in message and dead_url in message and "ConnectError" in message
    assert failure.value.reward == "pickscore" and failure.value.urls == (dead_url,)


def test_a_reward_can_be_a_named_component_of_a_services_reply(brightness):
    query = make_query(8)
    with client_for(RewardSpec(name="brightness", urls=[brightness.url]),
                    RewardSpec(name="batch", urls=[brightness.url], component="batch_items", weight=0.5)) as client:
        mixed = client.score(query)
    torch.testing.assert_close(mixed.raw["brightness"], brightness_of(query), rtol=1e-6, atol=0)
    torch.testing.assert_close(mixed.raw["batch"], mixed.components["batch"]["batch_items"])
    assert set(mixed.raw["batch"].tolist()) <= {1.0, 2.0, 3.0}  # items per forward, at most --max-batch-items
    torch.testing.assert_close(mixed.mixed, mixed.raw["brightness"] + 0.5 * mixed.raw["batch"])


def test_a_component_the_service_does_not_announce_fails_at_once_naming_the_ones_it_does(brightness):
    with client_for(RewardSpec(name="strict", urls=[brightness.url], component="strict")) as client:
        with pytest.raises(RewardServiceError, match=r"component 'strict' .*forward_index, batch_items"):
            client.score(make_query(4))


def test_hot_swapping_the_config_file_changes_the_next_mix(tmp_path, brightness, contrast_service):
    path = tmp_path / "rewards.yaml"
    path.write_text(f"rewards:\n  - {{name: brightness, url: '{brightness.url}', weight: 1.0}}\n"
                    f"retry: {{deadline_s: 30}}\n")
    query = make_query(8)
    with RewardClient(RewardSet.from_file(path)) as client:
        first = client.score(query)
        path.write_text(f"rewards:\n  - {{name: brightness, url: '{brightness.url}', weight: 0.5}}\n"
                        f"  - {{name: contrast, url: '{contrast_service.url}', weight: 3.0}}\n"
                        f"retry: {{deadline_s: 30}}\n")
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
        change = client.reload_if_changed()
        second = client.score(query)
    torch.testing.assert_close(first.mixed, brightness_of(query), rtol=1e-6, atol=0)
    assert "added reward 'contrast'" in change.description
    assert "reward 'brightness': weight 1.0 -> 0.5" in change.description
    torch.testing.assert_close(second.mixed, 0.5 * brightness_of(query) + 3.0 * contrast_of(query),
                               rtol=1e-5, atol=1e-7)
    assert set(second.contributions) == {"brightness", "contrast"}


@pytest.fixture(scope="module")
def guarded():
    """A service that needs a bearer key and accepts only images of at most 16 pixels."""
    with running_service(BRIGHTNESS, "--api-key", "s3cret", "--max-image-pixels", "16") as service:
        yield service


def test_the_api_key_is_sent_as_a_bearer_token(guarded):
    with client_for(RewardSpec(name="brightness", urls=[guarded.url], api_key="s3cret")) as client:
        query = make_query(2)
        query.images = query.images[:, :4, :4].contiguous()
        mixed = client.score(query)
    torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)


def test_a_wrong_api_key_fails_at_once_naming_the_status(guarded):
    with client_for(RewardSpec(name="brightness", urls=[guarded.url], api_key="wrong")) as client:
        with pytest.raises(RewardServiceError, match=r"reward 'brightness'.*answered 401: unauthorised"):
            client.score(make_query(2))


def test_a_request_the_service_rejects_is_not_retried_and_names_the_reason(guarded):
    with client_for(RewardSpec(name="brightness", urls=[guarded.url], api_key="s3cret")) as client:
        with pytest.raises(RewardServiceError, match=r"answered 422: image_too_large: items\[0\]"):
            client.score(make_query(2))  # 8x8 images: 64 pixels > 16, so no item is usable
    assert metric(guarded.url, "reward_request_duration_seconds_count", status="422") == 1


def test_the_api_key_never_appears_in_repr_or_dumps():
    spec = RewardSpec(name="a", urls=["http://a:1"], api_key="s3cret")
    assert "s3cret" not in repr(spec) and "s3cret" not in str(spec.model_dump())


def test_a_dead_replica_is_avoided_and_the_live_one_serves_every_chunk(brightness):
    dead_url = f"http://127.0.0.1:{free_port()}"
    before = metric(brightness.url, "reward_request_duration_seconds_count", status="200")
    retry = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=2.0, deadline_s=30.0)
    with client_for(RewardSpec(name="brightness", urls=[dead_url, brightness.url]), retry=retry) as client:
        query = make_query(12)
        mixed = client.score(query)
    torch.testing.assert_close(mixed.mixed, brightness_of(query), rtol=1e-6, atol=0)
    assert metric(brightness.url, "reward_request_duration_seconds_count", status="200") - before == 4
    assert mixed.service_stats["brightness"]["retries"] <= 2  # the dead replica cools down after failing


def test_a_reward_slower_than_its_timeout_is_retried_then_reported_unavailable():
    with running_service(BRIGHTNESS, "--forward-sleep-ms", "600") as slow:
        retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=1.5)
        with client_for(RewardSpec(name="slow", urls=[slow.url], timeout_s=0.2), retry=retry) as client:
            with pytest.raises(RewardUnavailableError, match=r"reward 'slow' is unavailable .*(Timeout|HTTP 504)"):
                client.score(make_query(2))
