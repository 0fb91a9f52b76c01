"""The one interface between the GRPO algorithms and a flow-matching text-to-image model.

Algorithms (trainer.algorithms) only ever see a `FlowModel`: encode prompts once, ask for the velocity v(x, sigma)
(classifier-free guidance applied inside), decode final states to uint8 images. Everything model-specific (text
encoders, VAE or pixel space, LoRA placement, timestep convention) lives in the adapter: SD3 (trainer.models.sd3)
and the embedded shapes model (trainer.models.shapes) both implement it.

Convention: sigma in [0, 1], sigma=1 is pure noise, sigma=0 is data; the Euler step is x_next = x + (sigma_next -
sigma) * v. Adapters convert sigma to their own timestep scale (diffusers SD3: t = 1000 * sigma).
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, fields, replace
from typing import Iterator

import torch


@dataclass
class Conditioning:
    """Row-aligned text conditioning for a batch of samples (one row per sample, not per prompt)."""

    prompt_embeds: torch.Tensor  # [B, L, D] token embeddings fed to the transformer's context stream
    pooled: torch.Tensor  # [B, P] pooled text embedding
    negative_prompt_embeds: torch.Tensor | None = None  # [B, L, D] unconditional embeddings, for CFG
    negative_pooled: torch.Tensor | None = None  # [B, P]

    def index(self, idx: torch.Tensor | slice | list[int]) -> "Conditioning":
        """Rows `idx` of every tensor (for minibatches and for repeating prompts into groups)."""
        return replace(self, **{f.name: (getattr(self, f.name)[idx] if getattr(self, f.name) is not None else None)
                                for f in fields(self)})

    def repeat_interleave(self, n: int) -> "Conditioning":
        """Each row repeated n times consecutively (prompt -> group of n samples)."""
        return replace(self, **{f.name: (getattr(self, f.name).repeat_interleave(n, dim=0)
                                         if getattr(self, f.name) is not None else None) for f in fields(self)})

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]


class FlowModel(abc.ABC):
    """A flow-matching model with a trainable LoRA adapter; the reference policy is the adapter disabled."""

    device: torch.device

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str], with_negative: bool) -> Conditioning:
        """Text conditioning for each prompt (no grad). with_negative adds the empty-prompt rows for CFG."""

    @abc.abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's state x (C, H, W), at the configured resolution."""

    @abc.abstractmethod
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """v(x, sigma) for a batch; sigma is [B] or scalar in [0,1]; CFG applied when guidance_scale > 1.

        Returns fp32. Gradients flow to the trainable (LoRA) parameters when grad is enabled."""

    @abc.abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final states (sigma=0) to images: uint8 [B, H, W, 3] on the CPU (no grad)."""

    @abc.abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA parameters the optimizer updates."""

    @abc.abstractmethod
    def reference(self) -> contextlib.AbstractContextManager:
        """Context in which velocity() is the reference policy (LoRA adapter disabled)."""

    @abc.abstractmethod
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable LoRA weights (for checkpoints and EMA), keyed stably across processes."""

    @abc.abstractmethod
    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of lora_state_dict (exact, in place)."""

    @abc.abstractmethod
    def save_lora(self, directory: str) -> None:
        """Write the LoRA in the form diffusers' `load_lora_weights` accepts for this model family."""

    @contextlib.contextmanager
    def no_adapter_grad(self) -> Iterator[None]:
        """Convenience: sampling context (no grad)."""
        with torch.no_grad():
            yield
