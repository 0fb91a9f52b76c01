"""Measure the shapes detector: accuracy on clean renders, refusal of degraded ones, time per image.

    python -m services.geneval.shapes_accuracy --scenes 1000 --image-size 32

Prints, for seeded random scenes of the shapes-world renderer (trainer.shapes_world.render):
- scene accuracy: the detections above the counting threshold (0.9) are exactly the drawn (class, colour) multiset;
- GenEval strict accuracy per tag on scenes rendered to satisfy every prompt of the world (should all be 1.0);
- the fraction of objects credited (confidence > 0.3) after Gaussian blur, motion smear, and on shapeless blobs;
- milliseconds per image for detection alone.
A development tool (it imports the renderer from the trainer package); the service itself never does.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from services.common.scorer import ScorerInput
from services.geneval.scorer import GenEvalScorer, GenEvalScorerConfig
from services.geneval.scoring import summarize
from services.geneval.shapes_detector import ShapesDetector


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of `sigma` pixels."""
    return np.clip(np.rint(ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def smeared(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Motion blur: the image averaged along a line of `length` pixels at `angle` (radians)."""
    kernel = np.zeros((2 * length + 1, 2 * length + 1))
    for t in np.linspace(-length / 2, length / 2, 4 * length):
        kernel[int(round(length + t * np.sin(angle))), int(round(length + t * np.cos(angle)))] += 1
    kernel /= kernel.sum()
    channels = [ndimage.convolve(image[..., c].astype(float), kernel, mode="nearest") for c in range(3)]
    return np.clip(np.rint(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def shapeless_blob(rng: np.random.Generator, size: int, colours: list[tuple[int, int, int]], wobble: float = 0.3,
                   softness: float = 0.0) -> np.ndarray:
    """A blob of a palette colour on white: a disc whose radius wobbles by up to `wobble` per harmonic (2-5),
    its edge blurred by `softness` pixels."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
    r0 = rng.uniform(0.12, 0.2) * size
    angle = np.arctan2(yy - cy, xx - cx)
    radius = r0 * (1 + sum(rng.uniform(-wobble, wobble) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)))
    alpha = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)
    if softness:
        alpha = ndimage.gaussian_filter(alpha, softness)
    colour = np.array(colours[rng.integers(len(colours))], float)
    return np.clip(np.rint(255 * (1 - alpha[..., None]) + colour * alpha[..., None]), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    from trainer.shapes_world import prompts
    from trainer.shapes_world.render import COLORS, RenderConfig, random_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000, help="random clean scenes to check")
    parser.add_argument("--image-size", type=int, default=32, help="rendered image side, pixels")
    parser.add_argument("--degraded", type=int, default=200, help="scenes per degradation (blur, smear, blobs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    args = parser.parse_args(argv)
    detector = ShapesDetector()
    config = RenderConfig(image_size=args.image_size)
    rng = np.random.default_rng(args.seed)

    scenes = [random_scene(rng, config) for _ in range(args.scenes)]
    start = time.perf_counter()
    found = detector.detect([scene.image for scene in scenes])
    per_image_ms = (time.perf_counter() - start) / len(scenes) * 1000
    exact = sum(sorted((d.class_name, d.color) for d in dets if d.confidence > 0.9)
                == sorted((o.cls, o.color) for o in scene.objects) for scene, dets in zip(scenes, found))
    objects = sum(len(scene.objects) for scene in scenes)
    print(f"clean scenes: {exact}/{len(scenes)} exact ({objects} objects), {per_image_ms:.2f} ms per image "
          f"({args.image_size}x{args.image_size})")

    metadata = prompts.all_metadata()
    items = [ScorerInput(prompts.scene_for(m, rng, config).image, m["prompt"], m) for m in metadata for _ in range(3)]
    outputs = GenEvalScorer(detector, GenEvalScorerConfig(reward="strict")).score(items)
    summary = summarize([i.metadata["tag"] for i in items], [o.value for o in outputs])
    print("strict accuracy on scenes made for every prompt (x3): "
          + ", ".join(f"{tag} {value:.3f}" for tag, value in summary.items()))

    degradations = {
        "blur sigma 0.6": lambda image: blurred(image, 0.6),
        "blur sigma 1.0": lambda image: blurred(image, 1.0),
        "smear 3 px": lambda image: smeared(image, 3, rng.uniform(0, np.pi)),
        "smear 5 px": lambda image: smeared(image, 5, rng.uniform(0, np.pi)),
    }
    for name, degrade in degradations.items():
        base = [random_scene(rng, config) for _ in range(args.degraded)]
        dets = detector.detect([degrade(scene.image) for scene in base])
        n_objects = sum(len(scene.objects) for scene in base)
        credited = sum(d.confidence > 0.3 for ds in dets for d in ds)
        print(f"{name}: {credited}/{n_objects} objects credited")
    palette = list(COLORS.values())
    for softness in (0.0, 0.8):
        blobs = [shapeless_blob(rng, args.image_size, palette, softness=softness) for _ in range(args.degraded)]
        credited = sum(d.confidence > 0.3 for ds in detector.detect(blobs) for d in ds)
        print(f"shapeless blobs (edge softness {softness}): {credited}/{len(blobs)} credited")


if __name__ == "__main__":
    main()
