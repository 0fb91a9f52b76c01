"""The embedded shapes model behind the FlowModel interface: a pixel-space SD3 transformer + the shapes text encoder.

The checkpoint directory (default: the shipped trainer/shapes_world/base_model, made by
`python -m trainer.shapes_world.pretrain`) holds `transformer/` (loaded with diffusers'
`SD3Transformer2DModel.from_pretrained`, the loader real SD3 weights use), `text_encoder/`
(`ShapesTextEncoder.from_pretrained`) and `shapes_model.json` (its native image size). The state x is the image
itself: [3, H, W] RGB in [-1, 1] (no VAE), so `decode` only maps [-1, 1] to uint8. Prompts are encoded by the
shapes text encoder; the negative is the empty prompt (as for SD3 in Flow-GRPO). Velocity, CFG, LoRA on Flow-GRPO's
attention targets and the reference policy come from `TransformerFlowModel`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.models.base import Conditioning
from trainer.models.transformer_flow import TransformerFlowConfig, TransformerFlowModel, resolve_device
from trainer.shapes_world.pixels import from_pixels
from trainer.shapes_world.text_encoder import ShapesTextEncoder

DEFAULT_SHAPES_MODEL = Path(__file__).resolve().parents[1] / "shapes_world" / "base_model"  # the shipped checkpoint
MODEL_INFO_NAME = "shapes_model.json"


@dataclass
class ShapesConfig(TransformerFlowConfig):
    """Shapes adapter settings (plus LoRA/precision/device fields inherited from TransformerFlowConfig)."""

    resolution: int | None = None  # image side in pixels; None = the checkpoint's native size (it must match it)


class ShapesModelNotFoundError(FileNotFoundError):
    """The shapes checkpoint directory is missing or incomplete."""


def _check_checkpoint(path: Path) -> dict:
    missing = [name for name in (MODEL_INFO_NAME, "transformer/config.json", "text_encoder/config.json")
               if not (path / name).is_file()]
    if missing:
        raise ShapesModelNotFoundError(
            f"shapes model not found: {path} lacks {', '.join(missing)}. The project ships one at "
            f"{DEFAULT_SHAPES_MODEL}; make a new one with `python -m trainer.shapes_world.pretrain --out-dir {path}`.")
    return json.loads((path / MODEL_INFO_NAME).read_text())


class ShapesFlowModel(TransformerFlowModel):
    """The shapes world's base model with a trainable LoRA on its SD3 transformer."""

    def __init__(self, path: str | Path | None = None, config: ShapesConfig | None = None):
        from diffusers import SD3Transformer2DModel

        self.path = Path(path).expanduser() if path else DEFAULT_SHAPES_MODEL
        config = config or ShapesConfig()
        info = _check_checkpoint(self.path)
        native = int(info["image_size"])
        if config.resolution is not None and config.resolution != native:
            raise ValueError(f"the shapes model at {self.path} works at its native {native} px (pixel space); "
                             f"got resolution {config.resolution}")
        self.resolution = native
        self.info = info
        transformer = SD3Transformer2DModel.from_pretrained(self.path / "transformer").float()
        super().__init__(transformer, config)
        self.text_encoder = ShapesTextEncoder.from_pretrained(self.path / "text_encoder")
        self.text_encoder.requires_grad_(False)
        self.text_encoder.to(resolve_device(config.device)).eval()

    def encode_prompts(self, prompts: list[str], with_negative: bool) -> Conditioning:
        with torch.no_grad():
            embeds, pooled = self.text_encoder.encode(list(prompts))
            negative = negative_pooled = None
            if with_negative:
                negative, negative_pooled = self.text_encoder.encode([""] * len(prompts))
        return Conditioning(prompt_embeds=embeds, pooled=pooled, negative_prompt_embeds=negative,
                            negative_pooled=negative_pooled)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.base_transformer.config.in_channels, self.resolution, self.resolution)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> uint8 [B, H, W, 3] on the CPU (the pixel state is the image)."""
        return from_pixels(x)
