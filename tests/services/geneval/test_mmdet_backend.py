"""The mmdet backend: GenEval's Mask2Former config built tiny, loaded through init_detector, served end to end.

Needs mmdet + mmcv with its compiled ops: run with the second venv (`.ci/mmdet_env.sh` builds it and runs
`pytest -m mmdet`). In the main venv these tests skip.
"""
from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.mmdet
pytest.importorskip("mmdet", reason="mmdet is not installed (see .ci/mmdet_env.sh)")
pytest.importorskip("mmcv._ext", reason="mmcv without its compiled ops (see .ci/mmdet_env.sh)")

import torch  # noqa: E402

from services.common.scorer import ScorerInput  # noqa: E402
from services.geneval.color_classifier import CLIPColorClassifier, masked_crop  # noqa: E402
from services.geneval.detections import Detection  # noqa: E402
from services.geneval.mmdet_backend import MMDetBackend, MMDetBackendConfig  # noqa: E402
from services.geneval.mmdet_tiny import build_tiny_geneval_mmdet  # noqa: E402
from services.geneval.scorer import GenEvalScorer  # noqa: E402
from tests.support.service_process import running_service  # noqa: E402

torch.set_num_threads(2)
QUERIES = 20  # tiny_config's num_queries: the designed detector finds this many dogs in every image


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    return build_tiny_geneval_mmdet(tmp_path_factory.mktemp("mmdet"), designed_class="dog")


@pytest.fixture(scope="module")
def backend(files) -> MMDetBackend:
    config, checkpoint, clip = files
    loaded = MMDetBackend(MMDetBackendConfig(config=str(config), checkpoint=str(checkpoint), clip_model=str(clip),
                                             device="cpu"))
    loaded.setup()
    return loaded


def picture(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_class_names_are_genevals(backend):
    assert len(backend.classes) == 80
    assert {"computer mouse", "tv remote", "computer keyboard", "dog", "tv"} <= set(backend.classes)
    assert not {"mouse", "remote", "keyboard"} & set(backend.classes)


def test_designed_detector_finds_confident_dogs_with_whole_image_masks(backend):
    detections = backend.detect([picture(0, 96, 128)])[0]
    dogs = [d for d in detections if d.class_name == "dog"]
    assert len(dogs) == QUERIES
    assert all(d.confidence > 0.9 for d in dogs)
    assert all(d.mask.shape == (96, 128) and d.mask.all() for d in dogs)
    assert all(d.confidence < 0.3 for d in detections if d.class_name != "dog")


def test_boxes_are_in_the_pixels_of_each_image(backend):
    small, large = backend.detect([picture(1, 64, 80), picture(2, 160, 120)])
    assert max(d.box[2] for d in small) <= 80 + 1 and max(d.box[3] for d in small) <= 64 + 1
    assert max(d.box[2] for d in large) > 100 and max(d.box[3] for d in large) > 150


def test_one_batched_forward_equals_one_forward_per_image(backend):
    images = [picture(3, 64, 64), picture(4, 96, 64)]
    batched = backend.detect(images)
    for image, together in zip(images, batched):
        alone = backend.detect([image])[0]
        assert [d.class_name for d in alone] == [d.class_name for d in together]
        assert np.allclose([d.confidence for d in alone], [d.confidence for d in together], atol=1e-4)


def test_missing_checkpoint_is_a_startup_error_naming_the_download(files, tmp_path):
    from services.common.scorer import WeightsNotFoundError

    backend = MMDetBackend(MMDetBackendConfig(config=str(files[0]), checkpoint=str(tmp_path / "absent.pth")))
    with pytest.raises(WeightsNotFoundError, match="download.openmmlab.com"):
        backend.setup()


def test_scorer_gives_genevals_verdicts_on_the_designed_detections(backend):
    scorer = GenEvalScorer(backend)
    image = picture(5, 64, 64)
    single_dog = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
    single_cat = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    two_dogs = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    outputs = scorer.score([ScorerInput(image, "a photo of a dog", single_dog),
                            ScorerInput(image, "a photo of a cat", single_cat),
                            ScorerInput(image, "a photo of two dogs", two_dogs)])
    assert [o.components["strict"] for o in outputs] == [1.0, 0.0, 0.0]  # 16 dogs kept: "two dogs" fails exclude


def test_colour_clause_uses_the_clip_verdict_on_the_grey_composited_crop(backend, files):
    image = picture(6, 64, 64)
    detection = backend.detect([image])[0][0]
    reference = CLIPColorClassifier(str(files[2]), device="cpu")
    reference.setup()
    logits = reference.image_embeddings([masked_crop(image, detection)]) @ reference.text_classifier("dog").T
    expected = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")[
        int(logits.argmax())]
    other = "blue" if expected != "blue" else "red"
    scorer = GenEvalScorer(backend)
    right, wrong = scorer.score([
        ScorerInput(image, f"a photo of a {expected} dog",
                    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": expected}]}),
        ScorerInput(image, f"a photo of a {other} dog",
                    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": other}]})])
    assert right.components["strict"] == 1.0 and wrong.components["strict"] == 0.0


@pytest.mark.slow
def test_service_replies_with_geneval_scores_over_http(files):
    config, checkpoint, clip = files
    image = picture(7, 64, 64)
    raw = {"raw": {"height": 64, "width": 64, "channels": 3, "pixels": base64.b64encode(image.tobytes()).decode()}}
    items = [{"image": raw, "prompt": "a photo of a dog",
              "metadata": {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}},
             {"image": raw, "prompt": "a photo of a cat",
              "metadata": {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}}]
    with running_service("services.geneval", "--detector", "mmdet", "--mmdet-config", str(config),
                         "--mmdet-checkpoint", str(checkpoint), "--clip-model", str(clip), "--mmdet-device", "cpu",
                         "--reward", "strict", ready_timeout_s=300) as service:
        reply = httpx.post(service.url + "/v1/score", json={"items": items}, timeout=120).json()
        info = httpx.get(service.url + "/v1/info", timeout=10).json()
    assert [score["value"] for score in reply["scores"]] == [1.0, 0.0]
    assert info["name"] == "geneval" and info["model"].startswith("mmdet:")


def test_detection_masks_are_boolean_arrays(backend):
    detection: Detection = backend.detect([picture(8, 48, 48)])[0][0]
    assert detection.mask.dtype == bool
