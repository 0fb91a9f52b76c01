"""GenEval's colour classifier: CLIP ViT-L/14 zero-shot over ten colours, on the box crop with the mask on grey.

What GenEval does (djghosh13/geneval, evaluation/evaluate_images.py, `color_classification` and `ImageCrops`):
- colours: red, orange, yellow, green, blue, purple, pink, brown, black, white;
- one zero-shot classifier per object class, from three templates: "a photo of a {c} {class}",
  "a photo of a {c}-colored {class}", "a photo of a {c} object" (clip_benchmark's `zero_shot_classifier`: per
  colour, the L2-normalised text embeddings of the templates are averaged and normalised again);
- each crop: the image composited over a uniform #999 grey through the detection's mask, then cropped to its box
  (PIL's crop, which rounds the float box), then CLIP's preprocessing (resize the short side to 224 bicubic,
  centre-crop 224, OpenAI mean/std);
- prediction: argmax of 100 * normalised image embedding . classifier.

Model choice: transformers' `CLIPModel` loading `openai/clip-vit-large-patch14`, not open_clip. GenEval loads
open_clip's "ViT-L-14" with pretrained="openai", i.e. OpenAI's released ViT-L/14 weights; the Hugging Face
repository holds the same OpenAI weights converted to the same architecture, with the same BPE tokenizer and the same
preprocessing (CLIPImageProcessor: shortest edge 224 bicubic, centre crop 224, OpenAI mean/std). open_clip needs
torchvision, and PyPI's torchvision breaks beside this project's CPU torch 2.13 (and with it
`from transformers import CLIPModel`; see docs/environment.md), while transformers is already in every reward
image, loads from the Hugging Face cache like the other rewards, and builds tiny test models from config.
Differences that remain: open_clip resizes with torchvision on the PIL image, transformers with PIL directly
(both bicubic); sub-pixel differences only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.common.scorer import WeightsNotFoundError
from services.geneval.detections import ColorRequest, Detection

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")  # GenEval's ten
TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # GenEval's default bgcolor "#999": what lies outside the mask in a crop
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # OpenAI's ViT-L/14, the weights of open_clip's ViT-L-14 "openai"


def masked_crop(image: np.ndarray, detection: Detection) -> Image.Image:
    """The detection's box cropped from the image composited on grey through its mask (GenEval's ImageCrops)."""
    picture = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if detection.mask is not None:
        if detection.mask.shape != (picture.height, picture.width):
            raise ValueError(f"mask shape {detection.mask.shape} does not match the image {picture.size[::-1]}")
        blank = Image.new("RGB", picture.size, color=BACKGROUND)
        picture = Image.composite(picture, blank, Image.fromarray(detection.mask.astype(np.uint8) * 255))
    return picture.crop(tuple(detection.box))


class CLIPColorClassifier:
    """Zero-shot colour of detections with CLIP; one image forward per batch of crops."""

    def __init__(self, model: str = DEFAULT_CLIP, device: str = "auto", dtype: str = "auto",
                 max_crops_per_forward: int = 64) -> None:
        self.model_source = model  # CLIP directory or hub id (resolved in the Hugging Face cache, never fetched)
        self.requested_device = device  # "cuda", "cpu" or "auto"
        self.requested_dtype = dtype  # "float16", "bfloat16", "float32" or "auto" (fp16 on GPU)
        self.max_crops_per_forward = max_crops_per_forward  # most crops in one image forward
        self.model: Any = None
        self.processor: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self._classifiers: dict[str, Any] = {}  # class name -> its (len(COLORS), dim) text classifier

    def setup(self) -> None:
        import torch
        from transformers import AutoProcessor, CLIPModel

        device = self.requested_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = self.requested_dtype
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_source, local_files_only=True)
            model = CLIPModel.from_pretrained(self.model_source, dtype=self.dtype, local_files_only=True)
        except (OSError, ValueError) as error:
            where = (f"the directory {self.model_source}" if Path(self.model_source).expanduser().exists()
                     else f"the Hugging Face cache (HF_HOME) for {self.model_source!r}")
            raise WeightsNotFoundError(
                f"could not load GenEval's CLIP colour classifier from {where} ({type(error).__name__}). Fetch it "
                f"once: `hf download {DEFAULT_CLIP}` (or pass --clip-model /path/to/clip-vit-large-patch14)"
            ) from error
        self.model = model.to(self.device).eval()
        self._classifiers.clear()

    def text_classifier(self, classname: str) -> Any:
        """(len(COLORS), dim) unit rows: clip_benchmark's zero_shot_classifier over GenEval's templates."""
        import torch

        if classname in self._classifiers:
            return self._classifiers[classname]

        texts = [template.format(c=colour, classname=classname) for colour in COLORS for template in TEMPLATES]
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.inference_mode():
            embeds = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                  attention_mask=tokens["attention_mask"].to(self.device))
        embeds = getattr(embeds, "pooler_output", embeds).float()
        embeds = torch.nn.functional.normalize(embeds, dim=-1).view(len(COLORS), len(TEMPLATES), -1).mean(dim=1)
        self._classifiers[classname] = torch.nn.functional.normalize(embeds, dim=-1)
        return self._classifiers[classname]

    def image_embeddings(self, crops: Sequence[Image.Image]) -> Any:
        """(len(crops), dim) unit image embeddings, in forwards of at most max_crops_per_forward."""
        import torch

        parts = []
        for start in range(0, len(crops), self.max_crops_per_forward):
            pixels = self.processor.image_processor(images=list(crops[start:start + self.max_crops_per_forward]),
                                                    return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                embeds = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.dtype))
            parts.append(torch.nn.functional.normalize(getattr(embeds, "pooler_output", embeds).float(), dim=-1))
        return torch.cat(parts)

    def classify(self, requests: Sequence[ColorRequest]) -> list[list[str]]:
        """One colour name per requested detection, per request, in order (GenEval's argmax over COLORS)."""
        crops = [masked_crop(request.image, detection) for request in requests for detection in request.detections]
        if not crops:
            return [[] for _ in requests]
        images = self.image_embeddings(crops)
        answers, start = [], 0
        for request in requests:
            count = len(request.detections)
            logits = 100.0 * images[start:start + count] @ self.text_classifier(request.class_name).T
            answers.append([COLORS[index] for index in logits.argmax(dim=1).tolist()])
            start += count
        return answers
