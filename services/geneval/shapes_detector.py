"""The `shapes` detector backend: classical computer vision (no weights) for the shapes world.

Finds coloured circles, squares and triangles on a plain background and reports them as GenEval detections (class,
confidence, box, mask, colour), so GenEval's rules score the shapes world exactly as they score COCO objects.

Per image:
1. background = the median colour of the border pixels;
2. each pixel is explained as a blend of the background and one palette colour: alpha = its projection on the
   background->colour segment, residual = its distance from that segment (relative to the segment's length). A
   pixel belongs to the colour with the smallest residual when alpha >= 0.5 and the residual is small, so
   antialiased edges keep their colour and off-palette colours belong to nothing;
3. connected components (8-neighbour) of each colour are the candidate objects; specks below a minimum area are
   dropped;
4. each candidate is compared with an ideal, antialiased (supersampled) circle, square and triangle of the same
   area, centre and size (from the alpha-weighted moments): soft IoU = sum(min(alpha, template)) /
   sum(max(alpha, template)). The best template names the class.

Refusal: GenEval trusts a detection above 0.3 (0.9 for counting), so the confidence must mean "this is cleanly that
shape". It is the product of (a) the fit: the soft IoU mapped linearly from `iou_reject` (0) to `iou_clean` (1),
(b) the separation: how far the best template beats the second best, mapped from 0 to `margin_clean` (1), and
(c) the size regularity: how close the bounding box is to the shape's canonical aspect (a circle or square is as
wide as tall), and (d) the sharpness: the candidate's edge fuzziness, sum(min(alpha, 1 - alpha)), beyond the
ideal antialiased template's, per pixel of outline (about 0 for a clean rendering, a blurred or smeared one has a
transition band several pixels wide). A blurred, smeared or shapeless blob fits no template well (its soft edges and irregular outline cost
IoU) and a round blob that is not a clean disc is neither circle nor square by a clear margin, so it is refused
(confidence near 0) rather than credited as a circle, which made chance-level generation score 1/3 on single objects
in a first attempt (docs/environment.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from services.geneval.detections import Detection, DetectorBackend

SHAPES = ("circle", "square", "triangle")  # classes of the shapes world
PALETTE = (  # colours of the shapes world (name, RGB), as trainer/shapes_world/render.py draws them
    ("red", (220, 40, 40)),
    ("green", (40, 170, 70)),
    ("blue", (40, 80, 220)),
    ("yellow", (235, 200, 40)),
)
TRIANGLE_HEIGHT_OVER_WIDTH = 1.0  # the renderer's triangle: apex at top centre, base along the bottom of its box


@dataclass(frozen=True)
class ShapesDetectorConfig:
    """Tolerances of the classical shapes detector (fractions, pixels as stated)."""

    palette: tuple[tuple[str, tuple[int, int, int]], ...] = PALETTE  # (colour name, RGB) pairs it can name
    triangle_aspect: float = TRIANGLE_HEIGHT_OVER_WIDTH  # height / width of an upright triangle
    max_residual: float = 0.25  # largest distance of a pixel from the background->colour segment, / segment length
    min_area_fraction: float = 0.003  # smallest component (pixels with alpha >= 0.5) as a fraction of the image
    iou_reject: float = 0.84  # soft IoU with the best template at or below which the fit scores 0
    iou_clean: float = 0.92  # soft IoU at or above which the fit scores 1
    margin_clean: float = 0.10  # IoU lead of the best template over the second at or above which separation scores 1
    fuzz_clean: float = 0.15  # edge fuzziness beyond the ideal template's, per outline pixel, up to which sharpness is 1
    fuzz_reject: float = 0.4  # the same, at or above which sharpness is 0 (blurred or smeared)
    aspect_tolerance: float = 0.12  # |log(box aspect / canonical aspect)| up to which size regularity is 1
    max_aspect_error: float = 0.5  # |log(box aspect / canonical aspect)| at which size regularity reaches 0
    supersample: int = 8  # sub-pixels per pixel side when rasterising the ideal templates
    min_confidence: float = 0.05  # candidates below this confidence are not reported at all
    window_pad: int = 2  # pixels around a component's box in which its soft alpha is read


@dataclass
class _Candidate:
    colour: str
    mask: np.ndarray  # full-image bool, alpha >= 0.5 on this component
    alpha: np.ndarray  # soft alpha in the window
    window: tuple[int, int, int, int]  # y0, y1, x0, x1 of the window
    scores: dict[str, float] = field(default_factory=dict)  # soft IoU per shape


def _coverage(shape: str, cx: float, cy: float, width: float, height: float, window: tuple[int, int, int, int],
              supersample: int) -> np.ndarray:
    """Fraction of each window pixel covered by the ideal shape centred (by its box) at (cx, cy)."""
    y0, y1, x0, x1 = window
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    u = ((xs - cx) / (width / 2.0))[None, :]  # box-normalised coordinates in [-1, 1], broadcast to the grid
    v = ((ys - cy) / (height / 2.0))[:, None]
    if shape == "circle":
        inside = u * u + v * v <= 1.0
    elif shape == "square":
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    else:  # upright triangle: apex (0, -1), base from (-1, 1) to (1, 1)
        inside = (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    return inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))


def _soft_iou(alpha: np.ndarray, template: np.ndarray) -> float:
    union = np.maximum(alpha, template).sum()
    return float(np.minimum(alpha, template).sum() / union) if union > 0 else 0.0


def _perimeter(shape: str, width: float, height: float) -> float:
    """Outline length of the ideal shape in its box, pixels."""
    if shape == "circle":  # Ramanujan's approximation for an ellipse
        a, b = width / 2, height / 2
        return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    if shape == "square":
        return 2 * (width + height)
    return width + 2 * math.hypot(width / 2, height)


def _fuzziness(alpha: np.ndarray) -> float:
    """How much of the coverage is neither in nor out: sum(min(alpha, 1 - alpha)); a crisp edge has little."""
    return float(np.minimum(alpha, 1.0 - alpha).sum())


class ShapesDetector(DetectorBackend):
    """Classical detector of the shapes world; colours are known at detection time."""

    name = "shapes"

    def __init__(self, config: ShapesDetectorConfig = ShapesDetectorConfig()) -> None:
        self.config = config
        self._names = tuple(name for name, _ in config.palette)
        self._rgb = np.array([rgb for _, rgb in config.palette], dtype=np.float32)

    @property
    def classes(self) -> tuple[str, ...]:
        return SHAPES

    @property
    def colors(self) -> tuple[str, ...]:
        return self._names

    def describe(self) -> dict[str, str]:
        return {"model": "classical-cv (no weights)", "revision": "1", "device": "cpu", "dtype": "float32"}

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        return [self.detect_one(image) for image in images]

    # --- one image
    def _blend(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """alpha and relative residual of every pixel for every palette colour: two (K, H, W) arrays."""
        pixels = image.astype(np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        offset = pixels - background  # H, W, 3
        directions = self._rgb - background  # K, 3
        lengths2 = np.maximum((directions**2).sum(axis=1), 1e-6)  # K
        raw_alpha = np.einsum("hwc,kc->khw", offset, directions) / lengths2[:, None, None]
        alpha = np.clip(raw_alpha, 0.0, 1.0)
        closest = background + alpha[..., None] * directions[:, None, None, :]  # K, H, W, 3
        residual = np.linalg.norm(pixels[None] - closest, axis=-1) / np.sqrt(lengths2)[:, None, None]
        return alpha, residual

    def detect_one(self, image: np.ndarray) -> list[Detection]:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
        config = self.config
        height, width = image.shape[:2]
        alpha, residual = self._blend(image)
        best = residual.argmin(axis=0)
        best_alpha = np.take_along_axis(alpha, best[None], axis=0)[0]
        best_residual = np.take_along_axis(residual, best[None], axis=0)[0]
        solid = (best_alpha >= 0.5) & (best_residual <= config.max_residual)
        min_area = max(3, int(math.ceil(config.min_area_fraction * height * width)))
        structure = np.ones((3, 3), dtype=bool)
        all_components = np.zeros((height, width), dtype=np.int32)
        candidates: list[tuple[int, np.ndarray, int]] = []  # (colour index, component mask, component id)
        next_id = 1
        for k in range(len(self._names)):
            labels, count = ndimage.label(solid & (best == k), structure=structure)
            for region in range(1, count + 1):
                mask = labels == region
                all_components[mask] = next_id
                if mask.sum() >= min_area:
                    candidates.append((k, mask, next_id))
                next_id += 1
        # every pixel belongs to its nearest component, so a neighbour's antialiased edge is not read as this one's
        _, (near_y, near_x) = ndimage.distance_transform_edt(all_components == 0, return_indices=True)
        nearest = all_components[near_y, near_x]
        # an edge pixel touching two objects is read for neither (its coverage is shared in unknown proportions)
        highest = ndimage.maximum_filter(all_components, size=3)
        lowest = ndimage.minimum_filter(np.where(all_components > 0, all_components, np.iinfo(np.int32).max), size=3)
        nearest[(all_components == 0) & (highest > 0) & (lowest < highest)] = 0
        detections = []
        for k, mask, component_id in candidates:
            detection = self._classify(k, mask, component_id, alpha[k], residual[k], nearest)
            if detection is not None and detection.confidence >= config.min_confidence:
                detections.append(detection)
        return detections

    def _classify(self, k: int, mask: np.ndarray, component_id: int, alpha: np.ndarray, residual: np.ndarray,
                  nearest: np.ndarray) -> Detection | None:
        config = self.config
        height, width = mask.shape
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        pad = config.window_pad
        window = (max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, height),
                  max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, width))
        y0, y1, x0, x1 = window
        soft = alpha[y0:y1, x0:x1].copy()
        soft[residual[y0:y1, x0:x1] > config.max_residual] = 0.0  # off-colour pixels are holes
        owner = nearest[y0:y1, x0:x1]
        soft[owner != component_id] = 0.0  # pixels nearer another object are not this one
        shared = owner == 0  # edge pixels shared with another object: read for neither
        mass = soft.sum()
        if mass <= 0:
            return None
        ys, xs = np.mgrid[y0:y1, x0:x1]
        cx = float((soft * (xs + 0.5)).sum() / mass)
        cy = float((soft * (ys + 0.5)).sum() / mass)
        var_x = float((soft * (xs + 0.5 - cx) ** 2).sum() / mass)
        var_y = float((soft * (ys + 0.5 - cy) ** 2).sum() / mass)
        scores: dict[str, float] = {}
        fuzz: dict[str, float] = {}  # edge fuzziness beyond the template's, per pixel of outline
        boxes: dict[str, tuple[float, float, float, float]] = {}
        aspects: dict[str, float] = {}
        for shape in SHAPES:
            # box size of the ideal shape with this mass and these second moments
            if shape == "circle":  # ellipse with semi-axes a, b: var = a^2 / 4
                w, h = 4 * math.sqrt(var_x), 4 * math.sqrt(var_y)
                canonical = 1.0
                box_cy = cy
            elif shape == "square":  # rectangle: var = w^2 / 12
                w, h = math.sqrt(12 * var_x), math.sqrt(12 * var_y)
                canonical = 1.0
                box_cy = cy
            else:  # upright triangle: var_x = w^2 / 24, var_y = h^2 / 18, centroid 2/3 h below the apex
                w, h = math.sqrt(24 * var_x), math.sqrt(18 * var_y)
                canonical = config.triangle_aspect
                box_cy = cy - h / 6.0  # the box centre is h/6 above the centroid
            if w <= 0 or h <= 0:
                scores[shape] = 0.0
                continue
            template = _coverage(shape, cx, box_cy, w, h, window, config.supersample)
            template[shared] = 0.0
            scores[shape] = _soft_iou(soft, template)
            fuzz[shape] = (_fuzziness(soft) - _fuzziness(template)) / _perimeter(shape, w, h)
            boxes[shape] = (cx - w / 2, box_cy - h / 2, cx + w / 2, box_cy + h / 2)
            aspects[shape] = abs(math.log((h / w) / canonical))
        ranked = sorted(scores, key=scores.get, reverse=True)
        shape, runner_up = ranked[0], ranked[1]
        if shape not in boxes:
            return None
        fit = np.clip((scores[shape] - config.iou_reject) / (config.iou_clean - config.iou_reject), 0.0, 1.0)
        separation = np.clip((scores[shape] - scores[runner_up]) / config.margin_clean, 0.0, 1.0)
        excess = max(aspects[shape] - config.aspect_tolerance, 0.0)
        regularity = np.clip(1.0 - excess / (config.max_aspect_error - config.aspect_tolerance), 0.0, 1.0)
        sharpness = np.clip((config.fuzz_reject - fuzz[shape]) / (config.fuzz_reject - config.fuzz_clean), 0.0, 1.0)
        confidence = float(fit * separation * regularity * sharpness)
        bx0, by0, bx1, by1 = boxes[shape]
        box = (max(bx0, 0.0), max(by0, 0.0), min(bx1, float(width)), min(by1, float(height)))
        return Detection(class_name=shape, confidence=confidence, box=box, mask=mask, color=self._names[k])
