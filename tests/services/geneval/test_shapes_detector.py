"""The classical shapes detector: right on every clean rendering, and it refuses what it cannot classify."""
import numpy as np
import pytest
from scipy import ndimage

from services.common.scorer import ScorerInput
from services.geneval.scorer import GenEvalScorer, GenEvalScorerConfig
from services.geneval.shapes_accuracy import blurred, shapeless_blob, smeared
from services.geneval.shapes_detector import PALETTE, SHAPES, ShapesDetector
from trainer.shapes_world import prompts
from trainer.shapes_world.render import CLASSES, COLORS, RenderConfig, random_scene

DETECTOR = ShapesDetector()
CLEAN_SCENES = 300  # seeded random scenes of 1-4 shapes checked one by one


def credited(detections, threshold=0.3):
    return [d for d in detections if d.confidence > threshold]


def random_blob(rng, wobble=0.3, softness=0.0):
    return shapeless_blob(rng, 32, list(COLORS.values()), wobble, softness)


def test_classes_and_palette_are_the_renderers():
    assert SHAPES == CLASSES
    assert dict(PALETTE) == COLORS


def test_every_clean_render_is_detected_exactly_with_counting_confidence():
    rng = np.random.default_rng(0)
    for index in range(CLEAN_SCENES):
        scene = random_scene(rng)
        found = DETECTOR.detect_one(scene.image)
        assert sorted((d.class_name, d.color) for d in credited(found, 0.9)) == \
            sorted((o.cls, o.color) for o in scene.objects), f"scene {index}"
        assert len(found) == len(scene.objects), f"scene {index}: spurious low-confidence detections"


def test_boxes_and_masks_match_the_ground_truth():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = random_scene(rng)
        found = DETECTOR.detect_one(scene.image)
        for obj in scene.objects:
            match = min(found, key=lambda d: np.abs(np.subtract(d.box, obj.box)).sum())
            assert (match.class_name, match.color) == (obj.cls, obj.color)
            assert np.abs(np.subtract(match.box, obj.box)).max() < 0.6  # pixels
            # masks agree up to the edge pixels (coverage near 0.5 rounds either way in a uint8 image)
            assert not (match.mask & ~ndimage.binary_dilation(obj.mask)).any()
            assert not (ndimage.binary_erosion(obj.mask) & ~match.mask).any()


def test_larger_images_are_detected_too():
    rng = np.random.default_rng(2)
    config = RenderConfig(image_size=64)
    for _ in range(30):
        scene = random_scene(rng, config)
        assert sorted((d.class_name, d.color) for d in credited(DETECTOR.detect_one(scene.image), 0.9)) == \
            sorted((o.cls, o.color) for o in scene.objects)


def test_scenes_made_for_every_prompt_are_strictly_correct():
    rng = np.random.default_rng(3)
    metadata = prompts.all_metadata()
    items = [ScorerInput(prompts.scene_for(m, rng).image, m["prompt"], m) for m in metadata]
    outputs = GenEvalScorer(DETECTOR, GenEvalScorerConfig(reward="strict")).score(items)
    wrong = [(m["prompt"], o.detail["reasons"]) for m, o in zip(metadata, outputs) if o.value != 1.0]
    assert wrong == []


@pytest.mark.parametrize("sigma", [0.8, 1.0, 1.5, 2.0])
def test_blurred_renders_are_refused(sigma):
    rng = np.random.default_rng(4)
    for _ in range(40):
        assert credited(DETECTOR.detect_one(blurred(random_scene(rng).image, sigma))) == []


@pytest.mark.parametrize("length", [5, 7])
def test_smeared_renders_are_refused(length):
    rng = np.random.default_rng(5)
    for _ in range(40):
        image = smeared(random_scene(rng).image, length, rng.uniform(0, np.pi))
        assert credited(DETECTOR.detect_one(image)) == []


def test_slightly_soft_shapes_are_never_misclassified():
    rng = np.random.default_rng(6)
    for _ in range(60):
        scene = random_scene(rng)
        for d in credited(DETECTOR.detect_one(blurred(scene.image, 0.6))):
            cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
            under = [o for o in scene.objects if o.box[0] <= cx <= o.box[2] and o.box[1] <= cy <= o.box[3]]
            assert [(o.cls, o.color) for o in under] == [(d.class_name, d.color)]


def test_soft_shapes_get_lower_confidence_than_clean_ones():
    rng = np.random.default_rng(7)
    scene = random_scene(rng)
    clean = max(d.confidence for d in DETECTOR.detect_one(scene.image))
    soft = max([d.confidence for d in DETECTOR.detect_one(blurred(scene.image, 0.6))] + [0.0])
    assert clean > soft


@pytest.mark.parametrize("softness", [0.0, 0.8])
def test_shapeless_blobs_are_refused(softness):
    rng = np.random.default_rng(8)
    for _ in range(60):
        assert credited(DETECTOR.detect_one(random_blob(rng, wobble=0.3, softness=softness))) == []


def test_chance_level_blobs_score_nothing_on_single_object():
    rng = np.random.default_rng(9)
    metadata = prompts.single_object("circle")
    items = [ScorerInput(random_blob(rng, wobble=0.25, softness=0.8), metadata["prompt"], metadata)
             for _ in range(60)]
    outputs = GenEvalScorer(DETECTOR).score(items)
    assert sum(o.components["strict"] for o in outputs) == 0


def test_off_palette_colours_are_not_detected():
    scene = random_scene(np.random.default_rng(10))
    purple = scene.image.copy()
    painted = np.any(scene.image != 255, axis=-1)
    purple[painted] = (150, 60, 170)
    assert credited(DETECTOR.detect_one(purple)) == []


def test_blank_and_noise_images_have_no_detections():
    rng = np.random.default_rng(11)
    assert DETECTOR.detect_one(np.full((32, 32, 3), 255, np.uint8)) == []
    assert credited(DETECTOR.detect_one(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8))) == []


def test_touching_shapes_of_one_colour_are_not_two_clean_objects():
    image = np.full((32, 32, 3), 255, np.uint8)
    image[8:16, 4:12] = COLORS["red"]
    image[8:16, 12:20] = COLORS["red"]  # two squares side by side form one 8x16 rectangle
    assert credited(DETECTOR.detect_one(image)) == []
