"""The shapes-world renderer: seeded, non-overlapping, antialiased shapes with exact ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.shapes_world.render import (BACKGROUND, CLASSES, COLORS, Placement, RenderConfig, ShapeSpec, draw,
                                         random_scene, render_scene)


def scenes(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(n)]


def test_the_same_seed_renders_the_same_scenes():
    a, b = scenes(3, 20), scenes(3, 20)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
        assert [(o.cls, o.color, o.box) for o in x.objects] == [(o.cls, o.color, o.box) for o in y.objects]


def test_images_are_32px_uint8_rgb_with_one_to_four_objects():
    counts = set()
    for scene in scenes(0, 200):
        assert scene.image.shape == (32, 32, 3) and scene.image.dtype == np.uint8
        counts.add(len(scene.objects))
        for obj in scene.objects:
            assert obj.cls in CLASSES and obj.color in COLORS
    assert counts == {1, 2, 3, 4}


def test_boxes_stay_inside_the_image_apart_from_each_other_and_large_enough():
    config = RenderConfig()
    for scene in scenes(1, 200):
        boxes = [o.box for o in scene.objects]
        for x0, y0, x1, y1 in boxes:
            assert x0 >= config.margin - 1e-6 and y0 >= config.margin - 1e-6
            assert x1 <= 32 - config.margin + 1e-6 and y1 <= 32 - config.margin + 1e-6
            assert x1 - x0 >= config.min_size_fraction * 32 - 1e-6
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                apart = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert apart >= config.gap - 1e-6


def test_masks_are_disjoint_and_pixels_outside_every_box_are_background():
    for scene in scenes(2, 100):
        total = np.zeros((32, 32), dtype=int)
        inside_any_box = np.zeros((32, 32), dtype=bool)
        for obj in scene.objects:
            assert obj.mask.any()
            total += obj.mask
            x0, y0, x1, y1 = obj.box
            inside_any_box[int(np.floor(y0)): int(np.ceil(y1)), int(np.floor(x0)): int(np.ceil(x1))] = True
        assert total.max() == 1
        assert (scene.image[~inside_any_box] == np.array(BACKGROUND, dtype=np.uint8)).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_fully_covered_pixels_have_exactly_the_named_colour(cls):
    scene = draw([ShapeSpec(cls, "blue")], [Placement(16.0, 16.0, 12.0)])
    assert (scene.image[16, 16] == np.array(COLORS["blue"], dtype=np.uint8)).all()
    assert scene.objects[0].box == (10.0, 10.0, 22.0, 22.0)


def test_the_three_classes_cover_different_areas_of_the_same_box():
    areas = {cls: draw([ShapeSpec(cls, "red")], [Placement(16.0, 16.0, 12.0)]).objects[0].mask.sum() for cls in CLASSES}
    assert areas["triangle"] < areas["circle"] < areas["square"]
    assert areas["square"] == 144


def test_triangle_points_up():
    mask = draw([ShapeSpec("triangle", "red")], [Placement(16.0, 16.0, 12.0)]).objects[0].mask
    assert mask[11].sum() < mask[20].sum()


def test_placement_constraints_are_honoured():
    rng = np.random.default_rng(0)
    scene = render_scene([ShapeSpec("circle", "red"), ShapeSpec("square", "green")], rng,
                         accept=lambda layout: layout[0].cx < layout[1].cx - 8)
    assert scene.objects[0].box[0] + 8 < scene.objects[1].box[0]


def test_every_clean_rendering_is_read_correctly_by_the_shapes_detector():
    from services.geneval.shapes_detector import ShapesDetector

    detector = ShapesDetector()
    detector.setup()
    rendered = scenes(7, 150)
    found = detector.detect([s.image for s in rendered])
    for scene, detections in zip(rendered, found):
        confident = sorted((d.class_name, d.color) for d in detections if d.confidence >= 0.9)
        assert confident == sorted((o.cls, o.color) for o in scene.objects)
