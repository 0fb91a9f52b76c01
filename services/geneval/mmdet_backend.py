"""GenEval's detector as a backend: mmdet 3.x Mask2Former (Swin-S, COCO instance segmentation) + the CLIP colours.

GenEval (djghosh13/geneval, evaluation/evaluate_images.py) runs `mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`
(mmdet 2.x name; mmdet 3.x: configs/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py with the
checkpoint its download_models.sh fetches) on each image and keeps, per COCO class, the instances' boxes, scores and
masks; the thresholds, per-class limit and position rules are applied by services.geneval.scoring, and the colour of
the objects a clause needs by services.geneval.color_classifier (CLIP ViT-L/14 on the grey-composited box crop).

Differences from GenEval's script, each deliberate:
- images arrive as decoded RGB arrays (the wire format), so the test pipeline starts with LoadImageFromNDArray on
  the BGR view (mmcv's convention; the model's data preprocessor converts BGR to RGB as for files), and the
  config's LoadAnnotations step (which needs ground truth) is dropped, as mmdet's own DetInferencer does;
- all images of a batch go through one `test_step` (mmdet's `inference_detector` loops image by image);
- class names are GenEval's (its object_names.txt): COCO's 80 in mmdet's order, with mmdet's "mouse", "remote" and
  "keyboard" named "computer mouse", "tv remote" and "computer keyboard" as GenEval's prompts name them.

Paths are settings (flags, or GENEVAL_* environment variables): a missing config or checkpoint is a startup error
that says where it looked and how to fetch the file once. mmdet, mmcv (with its compiled ops) and mmengine are
imported only here, when `--detector mmdet` is served (their environment: .ci/mmdet_env.sh, services/geneval/Dockerfile).
"""
from __future__ import annotations

import argparse
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.scorer import WeightsNotFoundError
from services.geneval.color_classifier import COLORS, DEFAULT_CLIP, CLIPColorClassifier
from services.geneval.detections import ColorRequest, Detection, DetectorBackend

CONFIG_NAME = "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco"  # GenEval's detector, mmdet 3.x config name
CHECKPOINT_URL = ("https://download.openmmlab.com/mmdetection/v3.0/mask2former/"
                  "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco/"
                  "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth")
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}
COCO_CLASSES = (  # mmdet 3.x CocoDataset.METAINFO["classes"], in label order
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def geneval_name(coco_name: str) -> str:
    """GenEval's name of a COCO class."""
    return GENEVAL_NAMES.get(coco_name, coco_name)


def bundled_config() -> str:
    """The config file shipped inside the mmdet package (mmdet/.mim/configs/...), or "" when mmdet is absent."""
    try:
        import mmdet
    except ImportError:
        return ""
    return str(Path(mmdet.__file__).parent / ".mim" / "configs" / "mask2former" / f"{CONFIG_NAME}.py")


@dataclass
class MMDetBackendConfig:
    """Where the detector and colour classifier weights are, and where they run."""

    config: str = ""  # mmdet config file; "" = the one bundled with mmdet (mask2former_swin-s-p4-w7-224_...lsj...)
    checkpoint: str = ""  # Mask2Former .pth checkpoint (GenEval's download_models.sh file); required
    clip_model: str = DEFAULT_CLIP  # CLIP ViT-L/14 directory or hub id (Hugging Face cache, never fetched)
    device: str = "auto"  # "cuda", "cuda:N", "cpu" or "auto"
    clip_dtype: str = "auto"  # CLIP compute dtype: float16 on GPU, float32 on CPU when "auto"


class MMDetBackend(DetectorBackend):
    """Mask2Former instances (boxes, scores, masks) + GenEval's CLIP colour classifier."""

    name = "mmdet"

    def __init__(self, config: MMDetBackendConfig) -> None:
        self.config = config
        self.model: Any = None
        self.pipeline: Any = None
        self.device = ""
        self._classes: tuple[str, ...] = tuple(geneval_name(name) for name in COCO_CLASSES)
        self.color_classifier = CLIPColorClassifier(config.clip_model, device=config.device, dtype=config.clip_dtype)

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def colors(self) -> tuple[str, ...]:
        return COLORS

    def _paths(self) -> tuple[Path, Path]:
        config = Path(self.config.config or bundled_config()).expanduser()
        if not self.config.config and not config.name:
            raise WeightsNotFoundError("no mmdet config given and mmdet is not installed: pass --mmdet-config")
        if not config.is_file():
            raise WeightsNotFoundError(
                f"mmdet config not found at {config}. Pass --mmdet-config (env GENEVAL_MMDET_CONFIG) pointing at "
                f"{CONFIG_NAME}.py (it ships with mmdet 3.x under mmdet/.mim/configs/mask2former/, or "
                f"`mim download mmdet --config {CONFIG_NAME} --dest DIR`)")
        if not self.config.checkpoint:
            raise WeightsNotFoundError(
                f"no Mask2Former checkpoint given. Fetch it once (`wget {CHECKPOINT_URL} -O "
                f"mask2former.pth`) and pass --mmdet-checkpoint (env GENEVAL_MMDET_CHECKPOINT)")
        checkpoint = Path(self.config.checkpoint).expanduser()
        if not checkpoint.is_file():
            raise WeightsNotFoundError(
                f"Mask2Former checkpoint not found at {checkpoint}. Fetch it once: `wget {CHECKPOINT_URL} -O "
                f"{checkpoint}` (or pass --mmdet-checkpoint / GENEVAL_MMDET_CHECKPOINT)")
        return config, checkpoint

    def setup(self) -> None:
        config_path, checkpoint_path = self._paths()
        import torch
        from mmcv.transforms import Compose
        from mmdet.apis import init_detector
        from mmengine.config import Config

        self.device = self.config.device if self.config.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = init_detector(str(config_path), str(checkpoint_path), device=self.device)
        self.model.eval()
        names = self.model.dataset_meta.get("classes") or COCO_CLASSES
        self._classes = tuple(geneval_name(name) for name in names)
        config = Config.fromfile(str(config_path))
        steps = copy.deepcopy(config.test_dataloader.dataset.pipeline)
        steps = [step for step in steps if "LoadAnnotations" not in step["type"]]
        steps[0] = dict(type="mmdet.LoadImageFromNDArray", to_float32=steps[0].get("to_float32", False))
        self.pipeline = Compose(steps)
        self.color_classifier.setup()

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        import torch

        if self.model is None:
            raise RuntimeError("MMDetBackend.setup() has not run")
        inputs, samples = [], []
        for index, image in enumerate(images):
            prepared = self.pipeline(dict(img=np.ascontiguousarray(image[..., ::-1]), img_id=index))
            inputs.append(prepared["inputs"])
            samples.append(prepared["data_samples"])
        with torch.no_grad():
            results = self.model.test_step(dict(inputs=inputs, data_samples=samples))
        return [self._detections(result) for result in results]

    def _detections(self, result: Any) -> list[Detection]:
        instances = result.pred_instances
        boxes = instances.bboxes.float().cpu().numpy()
        scores = instances.scores.float().cpu().numpy()
        labels = instances.labels.cpu().numpy()
        masks = instances.masks.cpu().numpy().astype(bool) if "masks" in instances else None
        return [Detection(class_name=self._classes[int(label)], confidence=float(score),
                          box=tuple(float(v) for v in box), mask=None if masks is None else masks[index])
                for index, (box, score, label) in enumerate(zip(boxes, scores, labels))]

    def classify_colors(self, requests: list[ColorRequest]) -> list[list[str]]:
        return self.color_classifier.classify(requests)

    def describe(self) -> dict[str, Any]:
        checkpoint = Path(self.config.checkpoint)
        return {"model": f"{CONFIG_NAME}:{checkpoint.name} + {self.config.clip_model}",
                "revision": checkpoint.stem.rsplit("-", 1)[-1] if "-" in checkpoint.stem else "",
                "device": self.device or self.config.device, "dtype": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The mmdet backend's flags (each falls back to a GENEVAL_* environment variable)."""
    defaults = MMDetBackendConfig()
    group = parser.add_argument_group("mmdet detector (GenEval's Mask2Former + CLIP colour classifier)")
    for flag, env, field, help_text in (
        ("--mmdet-config", "GENEVAL_MMDET_CONFIG", "config", f"mmdet config file (default: mmdet's bundled {CONFIG_NAME}.py)"),
        ("--mmdet-checkpoint", "GENEVAL_MMDET_CHECKPOINT", "checkpoint", "Mask2Former checkpoint (.pth), required"),
        ("--clip-model", "GENEVAL_CLIP_MODEL", "clip_model", "CLIP ViT-L/14 directory or hub id in the HF cache"),
        ("--mmdet-device", "GENEVAL_DEVICE", "device", "cuda, cuda:N, cpu or auto"),
        ("--clip-dtype", "GENEVAL_CLIP_DTYPE", "clip_dtype", "float16, bfloat16, float32 or auto"),
    ):
        default = os.environ.get(env, getattr(defaults, field))
        group.add_argument(flag, dest=f"mmdet_{field}", default=default, help=f"{help_text} (env {env})")


def build_backend(args: argparse.Namespace) -> MMDetBackend:
    """The backend `python -m services.geneval --detector mmdet` serves."""
    return MMDetBackend(MMDetBackendConfig(config=args.mmdet_config, checkpoint=args.mmdet_checkpoint,
                                           clip_model=args.mmdet_clip_model, device=args.mmdet_device,
                                           clip_dtype=args.mmdet_clip_dtype))
