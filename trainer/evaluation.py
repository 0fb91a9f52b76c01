"""Periodic evaluation: deterministic sampling (a = 0, the Euler ODE of docs/algorithms.md P1) on held-out prompts.

Each evaluation samples one image per held-out prompt from the same fixed initial noise (seeded once per run, so
evaluations at different steps are comparable), with the EMA weights swapped in when EMA is on, scores them with
the run's reward client and reports the mixed and per-reward means. Images come back for the grid.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from trainer.algorithms.base import RewardQuery
from trainer.models.base import FlowModel
from trainer.prompt_data import PromptRecord
from trainer.sampling.schedule import sd3_sigmas


@torch.no_grad()
def sample_deterministic(model: FlowModel, prompts: list[str], num_steps: int, shift: float, guidance_scale: float,
                         seed: int, batch_size: int = 16) -> torch.Tensor:
    """uint8 [len(prompts), H, W, 3]: Euler ODE x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v from seeded x_T."""
    sigmas = sd3_sigmas(num_steps, shift)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *model.latent_shape()), generator=generator)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond = model.encode_prompts(chunk, with_negative=guidance_scale > 1.0)
        x = noise[start:start + len(chunk)].to(model.device)
        for i in range(num_steps):
            sigma = sigmas[i].expand(len(chunk)).to(model.device)
            v = model.velocity(x, sigma, cond, guidance_scale)
            x = x + (sigmas[i + 1] - sigmas[i]).item() * v
        images.append(model.decode(x))
    return torch.cat(images)


def evaluate(model: FlowModel, records: list[PromptRecord], reward_client: Any, *, num_steps: int, shift: float,
             guidance_scale: float, seed: int, ema=None) -> tuple[dict[str, float], torch.Tensor]:
    """Sample the held-out prompts deterministically (EMA weights when given), score them; metrics and images."""
    prompts = [r.prompt for r in records]
    swap = ema.swapped_in(model) if ema is not None else contextlib.nullcontext()
    with swap:
        images = sample_deterministic(model, prompts, num_steps, shift, guidance_scale, seed)
    query = RewardQuery(images=images, prompts=prompts, metadata=[r.metadata for r in records],
                        branch=[None] * len(records), group=torch.arange(len(records), dtype=torch.int64))
    mixed = reward_client.submit(query).result()
    metrics = {"reward_mixed_mean": float(mixed.mixed.mean())}
    for name, raw in mixed.raw.items():
        metrics[f"reward/{name}/raw_mean"] = float(raw.mean())
    return metrics, images
