"""PickScore served for real: a tiny random CLIPModel + CLIPProcessor of PickScore's architecture, saved with
save_pretrained, loaded by `python -m services.pickscore` through the same from_pretrained code real weights use."""
from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from protos.reward.v1 import reward_pb2
from services.common.codec import raw_image
from services.common.scorer import ScorerInput
from tests.support.service_process import REPO_ROOT, running_service

PROMPTS = ["a photo of the cat", "a red dog", "the photo"]


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    from services.pickscore.tiny_model import build_tiny_pickscore

    return build_tiny_pickscore(tmp_path_factory.mktemp("tiny-pickscore"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8) for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def service(tiny_pickscore):
    with running_service("services.pickscore", "--model", str(tiny_pickscore), "--processor", str(tiny_pickscore),
                         "--max-wait-ms", "5", env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}) as s:
        yield s


def score_request(images) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=raw_image(image), prompt=prompt)
                                          for image, prompt in zip(images, PROMPTS)])


def test_json_and_protobuf_requests_get_identical_scores(service, images):
    request = score_request(images)
    by_protobuf = httpx.post(service.url + "/v1/score", content=request.SerializeToString(),
                             headers={"content-type": "application/x-protobuf"}, timeout=60)
    by_json = httpx.post(service.url + "/v1/score", content=json_format.MessageToJson(request),
                         headers={"content-type": "application/json"}, timeout=60)
    assert by_protobuf.status_code == 200 and by_json.status_code == 200
    protobuf_values = [s.value for s in reward_pb2.ScoreResponse.FromString(by_protobuf.content).scores]
    json_values = [s.value for s in json_format.Parse(by_json.text, reward_pb2.ScoreResponse()).scores]
    assert protobuf_values == json_values
    assert len(set(protobuf_values)) == len(PROMPTS)


def test_served_score_is_logit_scale_times_cosine_of_the_clip_embeddings(service, tiny_pickscore, images):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_pickscore).eval()
    processor = CLIPProcessor.from_pretrained(tiny_pickscore)
    with torch.no_grad():
        expected = []
        for image, prompt in zip(images, PROMPTS):
            inputs = processor(images=[image], text=[prompt], return_tensors="pt", padding=True)
            out = model(**inputs)
            image_embeds = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            text_embeds = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            expected.append(float(model.logit_scale.exp() * (image_embeds * text_embeds).sum()))
    reply = httpx.post(service.url + "/v1/score", content=score_request(images).SerializeToString(),
                       headers={"content-type": "application/x-protobuf"}, timeout=60)
    scores = reward_pb2.ScoreResponse.FromString(reply.content).scores
    assert [s.value for s in scores] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert [s.components["cosine"] * 100.0 for s in scores] == pytest.approx(expected, rel=1e-3, abs=1e-2)


def test_info_reports_the_scale_dtype_and_model(service, tiny_pickscore):
    info = httpx.get(service.url + "/v1/info").json()
    assert info["name"] == "pickscore" and info["model"] == str(tiny_pickscore)
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert "logit_scale.exp() * cosine" in info["description"] and "= 100" in info["description"]
    assert info["scoreMax"] == pytest.approx(100.0, rel=1e-3) and info["revision"].startswith("sha256:")


def test_scorer_batches_give_the_same_scores_as_single_items(tiny_pickscore, images):
    from services.pickscore.scorer import PickScoreScorer

    scorer = PickScoreScorer(model=str(tiny_pickscore), processor=str(tiny_pickscore))
    scorer.setup()
    inputs = [ScorerInput(image=image, prompt=prompt) for image, prompt in zip(images, PROMPTS)]
    batched = [o.value for o in scorer.score(inputs)]
    single = [scorer.score([item])[0].value for item in inputs]
    assert batched == pytest.approx(single, rel=1e-4, abs=1e-4)


def test_missing_weights_are_a_clear_startup_error(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, "-m", "services.pickscore", "--model", str(missing), "--processor", str(missing),
         "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1
    assert "weights not found" in result.stderr and str(missing) in result.stderr
    assert "Looked at" in result.stderr and "save_pretrained" in result.stderr


def test_missing_hub_weights_name_the_cache_and_how_to_download(monkeypatch):
    from services.common.scorer import WeightsNotFoundError
    from services.pickscore.scorer import PickScoreScorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as raised:
        PickScoreScorer().setup()
    message = str(raised.value)
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download" in message and "Hugging Face cache" in message
