"""The Stable Diffusion 3 / 3.5 adapter: diffusers' StableDiffusion3Pipeline parts behind the FlowModel interface.

Loads the pipeline (CLIP-L, CLIP-G and T5 text encoders with their tokenizers, the SD3 transformer, the VAE and the
scheduler config) with `StableDiffusion3Pipeline.from_pretrained` from a local directory or a hub id through the
Hugging Face cache (HF_HOME / HF_HUB_CACHE; HF_HUB_OFFLINE=1 forbids network look-ups). Nothing is silently
substituted: a model that is not there raises `ModelNotFoundError` saying where it looked and how to fetch it.

Prompts are encoded by the pipeline's own `encode_prompt` (CLIP penultimate hidden states concatenated, zero-padded
to T5's width, then T5 tokens appended; pooled = both CLIP projections); the negative prompt is the empty prompt,
as in Flow-GRPO. Decoding undoes the VAE's scaling and shift factors (latents / scaling + shift) and maps [-1, 1] to
uint8 exactly as the pipeline's image processor does. The VAE runs in fp32 (as Flow-GRPO keeps it); the text
encoders and the transformer run in the configured dtype. Velocity, CFG and LoRA come from TransformerFlowModel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.models.base import Conditioning
from trainer.models.transformer_flow import TransformerFlowConfig, TransformerFlowModel, resolve_device, resolve_dtype

DEFAULT_SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"  # the hub id Flow-GRPO trains


class ModelNotFoundError(FileNotFoundError):
    """The model weights are neither at the given local path nor in the Hugging Face cache."""


@dataclass
class SD3Config(TransformerFlowConfig):
    """SD3 adapter settings (plus LoRA/precision/device fields inherited from TransformerFlowConfig)."""

    resolution: int = 512  # image height and width in pixels (Flow-GRPO trains SD3.5-M at 512)
    max_sequence_length: int = 128  # T5 tokens per prompt (Flow-GRPO: 128; diffusers' pipeline default: 256)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_local_path(path: str) -> bool:
    """A string the user meant as a directory (absolute, relative with ./ or ~, or deeper than owner/name)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _not_found(path: str, cause: BaseException | None) -> ModelNotFoundError:
    local = Path(path).expanduser().resolve()
    if _looks_like_local_path(path):
        where = f"no StableDiffusion3Pipeline directory at {local}"
        how = (f"download it there with `huggingface-cli download {DEFAULT_SD3_MODEL} --local-dir {local}` "
               f"(or pass a hub id such as {DEFAULT_SD3_MODEL})")
    else:
        where = (f"no local directory {local} and not in the Hugging Face cache {_hub_cache()} "
                 f"(HF_HUB_OFFLINE={int(_hub_offline())})")
        how = (f"fetch it with `huggingface-cli download {path}` (gated models: accept the licence on "
               f"huggingface.co and run `huggingface-cli login` first), then run again; or pass a local directory")
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
    return ModelNotFoundError(f"SD3 model {path!r} not found: {where}{detail}. To provide it, {how}.")


def _dtype_argument_name() -> str:
    """diffusers >= 0.42 calls from_pretrained's dtype argument `dtype` (`torch_dtype` is deprecated there)."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_sd3_pipeline(path: str, dtype: torch.dtype):
    """StableDiffusion3Pipeline.from_pretrained(path) with the VAE in fp32 and everything else in `dtype`."""
    from diffusers import StableDiffusion3Pipeline

    if _looks_like_local_path(path) and not Path(path).expanduser().is_dir():
        raise _not_found(path, None)
    source = str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else path
    dtypes = {"default": dtype, "vae": torch.float32}
    try:
        return StableDiffusion3Pipeline.from_pretrained(source, **{_dtype_argument_name(): dtypes})
    except (OSError, ValueError) as error:  # diffusers/huggingface_hub raise these for missing or unfetchable files
        raise _not_found(path, error) from error


class SD3FlowModel(TransformerFlowModel):
    """SD3 / SD3.5 (default: stabilityai/stable-diffusion-3.5-medium) with a trainable LoRA on the transformer."""

    def __init__(self, path: str | None = None, config: SD3Config | None = None):
        path = path or DEFAULT_SD3_MODEL
        config = config or SD3Config()
        device = resolve_device(config.device)
        pipeline = load_sd3_pipeline(path, resolve_dtype(config.dtype, device))
        factor = pipeline.vae_scale_factor * pipeline.transformer.config.patch_size
        if config.resolution % factor:
            raise ValueError(f"resolution {config.resolution} must be a multiple of {factor} (VAE scale x patch size)")
        super().__init__(pipeline.transformer, config)
        for encoder in (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3, pipeline.vae):
            encoder.requires_grad_(False)
            encoder.to(self.device)
            encoder.eval()
        self.path = path
        self.pipeline = pipeline
        self.scheduler = pipeline.scheduler  # FlowMatchEulerDiscreteScheduler; its config holds the shift (3.0)

    def encode_prompts(self, prompts: list[str], with_negative: bool) -> Conditioning:
        with torch.no_grad():
            embeds, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
                do_classifier_free_guidance=with_negative, negative_prompt="",
                max_sequence_length=self.config.max_sequence_length)
        return Conditioning(prompt_embeds=embeds, pooled=pooled, negative_prompt_embeds=negative,
                            negative_pooled=negative_pooled)

    def latent_shape(self) -> tuple[int, ...]:
        side = self.config.resolution // self.pipeline.vae_scale_factor
        return (self.transformer.config.in_channels, side, side)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipeline.vae
        with torch.no_grad():
            latents = x.to(self.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(latents, return_dict=False)[0]
            image = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return image.permute(0, 2, 3, 1).cpu()
