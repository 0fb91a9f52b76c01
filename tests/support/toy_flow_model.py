"""A small analytic FlowModel for the algorithm tests: a tiny MLP velocity with a LoRA-like trainable delta.

v(x, sigma, c) = W2 tanh(W1 [x, sigma, c] + scale * B A [x, sigma, c]) + (x - m(c)) * 0.5
W1, W2 are frozen; (A, B) is the adapter, B starts at zero (as a fresh LoRA), and `reference()` disables it.
Text conditioning is a fixed pseudo-random embedding per prompt (stable hash), the negative prompt is all zeros,
and CFG runs the conditional and unconditional rows in one batched call (2 NFE per sample). Every call is recorded
in `evaluations` (rows, sigmas, guidance) so tests can count NFE and check the times the model was asked about.
decode maps the first three channels from [-1, 1] to uint8 RGB.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch

from trainer.models.base import Conditioning, FlowModel


@dataclass
class Evaluation:
    """One velocity() call."""

    rows: int  # samples in the call (before CFG doubling)
    sigmas: torch.Tensor  # [rows] the sigma of each row
    guidance_scale: float  # CFG scale of the call
    grad: bool  # whether autograd was recording


class ToyFlowModel(FlowModel):
    """Analytic flow model of latent shape (channels, size, size)."""

    def __init__(self, channels: int = 3, size: int = 4, text_dim: int = 6, hidden: int = 24, rank: int = 4,
                 seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")
        self.channels, self.size, self.text_dim = channels, size, text_dim
        dim = channels * size * size
        in_dim = dim + 1 + text_dim
        self.w1 = torch.randn(hidden, in_dim, generator=gen) / in_dim**0.5
        self.w2 = torch.randn(dim, hidden, generator=gen) / hidden**0.5
        self.w_text = torch.randn(dim, text_dim, generator=gen) * 0.5
        self.lora_a = torch.nn.Parameter(torch.randn(rank, in_dim, generator=gen) / in_dim**0.5)
        self.lora_b = torch.nn.Parameter(torch.zeros(hidden, rank))
        self.lora_scale = 2.0
        self.adapter_enabled = True
        self.evaluations: list[Evaluation] = []

    # --- FlowModel -------------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str], with_negative: bool) -> Conditioning:
        embeds = []
        for prompt in prompts:
            seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=4).digest(), "little")
            embeds.append(torch.randn(self.text_dim, generator=torch.Generator().manual_seed(seed)))
        pooled = torch.stack(embeds)
        negative = torch.zeros_like(pooled) if with_negative else None
        return Conditioning(prompt_embeds=pooled.unsqueeze(1), pooled=pooled,
                            negative_prompt_embeds=None if negative is None else negative.unsqueeze(1),
                            negative_pooled=negative)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def _raw_velocity(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).float()
        inputs = torch.cat([flat, sigma.reshape(-1, 1), text], dim=1)
        pre = inputs @ self.w1.T
        if self.adapter_enabled:
            pre = pre + self.lora_scale * (inputs @ self.lora_a.T) @ self.lora_b.T
        out = torch.tanh(pre) @ self.w2.T + 0.5 * (flat - text @ self.w_text.T)
        return out.reshape(x.shape)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0]).clone()
        self.evaluations.append(Evaluation(rows=x.shape[0], sigmas=sigma.detach().clone(),
                                           guidance_scale=guidance_scale, grad=torch.is_grad_enabled()))
        if guidance_scale > 1.0:
            both = self._raw_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                      torch.cat([cond.pooled, cond.negative_pooled]))
            cond_v, uncond_v = both.chunk(2)
            return uncond_v + guidance_scale * (cond_v - uncond_v)
        return self._raw_velocity(x, sigma, cond.pooled)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.detach()[:, :3].float().clamp(-1, 1)
        return ((rgb + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.lora_a, self.lora_b]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        previous = self.adapter_enabled
        self.adapter_enabled = False
        try:
            yield
        finally:
            self.adapter_enabled = previous

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return {"lora_a": self.lora_a.detach().clone(), "lora_b": self.lora_b.detach().clone()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.lora_a.copy_(state["lora_a"])
            self.lora_b.copy_(state["lora_b"])

    def save_lora(self, directory: str) -> None:
        from safetensors.torch import save_file

        save_file(self.lora_state_dict(), f"{directory}/toy_lora.safetensors")

    # --- test helpers ----------------------------------------------------------------------------------------
    def perturb_adapter(self, scale: float = 0.3, seed: int = 1) -> None:
        """Give the adapter a nonzero delta so the policy differs from the reference."""
        with torch.no_grad():
            self.lora_b.copy_(torch.randn(self.lora_b.shape, generator=torch.Generator().manual_seed(seed)) * scale)

    def nfe(self) -> int:
        """Forward rows evaluated so far, CFG counted twice."""
        return sum(e.rows * (2 if e.guidance_scale > 1.0 else 1) for e in self.evaluations)


def toy_reward(images: torch.Tensor) -> torch.Tensor:
    """An analytic in-process reward on uint8 images [M, H, W, 3]: red minus blue brightness, in [-1, 1]."""
    rgb = images.float() / 255.0
    return (rgb[..., 0] - rgb[..., 2]).mean(dim=(1, 2))
