"""GenEval's CLIP colour classifier: the crop it looks at, its prompts, its batching, its loading errors.

A tiny random CLIPModel of the real architecture (services.pickscore.tiny_model) stands in for ViT-L/14 and loads
through the same `from_pretrained` path the real weights use.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.scorer import WeightsNotFoundError
from services.geneval.color_classifier import BACKGROUND, COLORS, TEMPLATES, CLIPColorClassifier, masked_crop
from services.geneval.detections import ColorRequest, Detection
from services.pickscore.tiny_model import build_tiny_pickscore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> CLIPColorClassifier:
    directory = build_tiny_pickscore(tmp_path_factory.mktemp("clip"), image_size=32)
    loaded = CLIPColorClassifier(model=str(directory), device="cpu")
    loaded.setup()
    return loaded


def square_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def noise(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_geneval_colours_and_templates():
    assert COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
    assert [t.format(c="red", classname="dog") for t in TEMPLATES] == [
        "a photo of a red dog", "a photo of a red-colored dog", "a photo of a red object"]


def test_crop_is_the_box_with_grey_outside_the_mask():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[..., 0] = 255  # all red
    mask = square_mask(40, 40, (10, 10, 20, 20))
    crop = np.asarray(masked_crop(image, Detection("dog", 0.9, (5.0, 5.0, 25.0, 25.0), mask=mask)))
    assert crop.shape == (20, 20, 3)
    assert tuple(crop[0, 0]) == BACKGROUND  # (5, 5) lies outside the mask
    assert tuple(crop[10, 10]) == (255, 0, 0)  # (15, 15) lies inside it


def test_crop_without_mask_is_the_plain_box():
    image = noise(0, 40)
    crop = np.asarray(masked_crop(image, Detection("dog", 0.9, (4.0, 6.0, 14.0, 30.0))))
    assert np.array_equal(crop, image[6:30, 4:14])


def test_text_classifier_has_one_unit_row_per_colour(classifier):
    rows = classifier.text_classifier("dog")
    assert rows.shape[0] == len(COLORS)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(len(COLORS)), atol=1e-5)
    assert not torch.allclose(rows, classifier.text_classifier("cat"))  # the class name is in two templates


def test_one_colour_per_detection_from_the_ten(classifier):
    detections = tuple(Detection("dog", 0.9, (0.0, 0.0, 32.0 + i, 32.0)) for i in range(3))
    answers = classifier.classify([ColorRequest(noise(1), detections, "dog"), ColorRequest(noise(2), (), "cat")])
    assert len(answers) == 2 and len(answers[0]) == 3 and answers[1] == []
    assert set(answers[0]) <= set(COLORS)


def test_pixels_outside_the_mask_do_not_change_the_colour(classifier):
    mask = square_mask(64, 64, (16, 16, 48, 48))
    first, second = noise(3), noise(4)
    second[mask] = first[mask]  # same object, different surroundings
    detection = Detection("dog", 0.9, (8.0, 8.0, 56.0, 56.0), mask=mask)
    one = classifier.image_embeddings([masked_crop(first, detection)])
    two = classifier.image_embeddings([masked_crop(second, detection)])
    assert torch.allclose(one, two)


def test_batched_answers_equal_one_by_one_answers(classifier):
    requests = [ColorRequest(noise(seed), (Detection("cup", 0.9, (0.0, 0.0, 40.0, 50.0)),), "cup")
                for seed in range(5, 11)]
    batched = classifier.classify(requests)
    classifier.max_crops_per_forward = 2
    try:
        assert classifier.classify(requests) == batched
        assert [classifier.classify([request])[0] for request in requests] == batched
    finally:
        classifier.max_crops_per_forward = 64


def test_missing_clip_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="hf download openai/clip-vit-large-patch14"):
        CLIPColorClassifier(model=str(tmp_path / "absent"), device="cpu").setup()
