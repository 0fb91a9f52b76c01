"""The shapes model's state space is the image: uint8 RGB <-> float [-1, 1] channels-first, both directions."""
from __future__ import annotations

import torch


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_pixels(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] (clamped) -> uint8 [B, H, W, 3] on the CPU."""
    with torch.no_grad():
        return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
