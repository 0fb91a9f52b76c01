"""Exponential moving average of the LoRA weights (Flow-GRPO's EMAModuleWrapper: decay 0.9 every 8 steps).

Every `interval` optimizer steps: ema <- decay * ema + (1 - decay) * param, in fp32, keyed like
`FlowModel.lora_state_dict()`. `swapped_in(model)` temporarily loads the EMA weights into the model (evaluation
uses them) and restores the trained weights exactly afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from trainer.models.base import FlowModel


class LoraEMA:
    def __init__(self, initial: dict[str, torch.Tensor], decay: float, interval: int):
        self.decay = decay  # weight of the old average per update
        self.interval = interval  # optimizer steps between updates
        self.shadow = {k: v.detach().to(torch.float32).clone() for k, v in initial.items()}

    def maybe_update(self, current: dict[str, torch.Tensor], optimizer_step: int) -> bool:
        """Update after optimizer step number `optimizer_step` (1-based) when it is a multiple of the interval."""
        if optimizer_step % self.interval:
            return False
        with torch.no_grad():
            for key, value in current.items():
                self.shadow[key].mul_(self.decay).add_(value.detach().to(torch.float32), alpha=1.0 - self.decay)
        return True

    @contextlib.contextmanager
    def swapped_in(self, model: FlowModel) -> Iterator[None]:
        trained = {k: v.detach().clone() for k, v in model.lora_state_dict().items()}
        model.load_lora_state_dict({k: v.to(trained[k].dtype) for k, v in self.shadow.items()})
        try:
            yield
        finally:
            model.load_lora_state_dict(trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state keys differ from the model's LoRA keys: {sorted(missing)[:5]}")
        self.shadow = {k: v.to(torch.float32).clone() for k, v in state.items()}
