"""Shared FlowModel machinery for every adapter whose denoiser is a diffusers `SD3Transformer2DModel`.

What lives here (and nowhere else): the velocity with classifier-free guidance, the LoRA adapter (peft, on
Flow-GRPO's attention target modules), the reference policy (adapter disabled), LoRA state for checkpoints and EMA,
and saving the LoRA in the form `StableDiffusion3Pipeline.load_lora_weights` reads. What a subclass adds: its text
encoder (`encode_prompts`), its state space (`latent_shape`) and its image decoder (`decode`). SD3
(trainer.models.sd3) and the embedded shapes model both subclass `TransformerFlowModel`.

Conventions (trainer/models/base.py): sigma in [0, 1] with sigma=1 pure noise; diffusers' SD3 transformer takes the
timestep t = 1000 * sigma (FlowMatchEulerDiscreteScheduler's num_train_timesteps), and predicts the velocity
v = noise - data, so the Euler step is x + (sigma_next - sigma) * v. CFG follows the diffusers pipeline and Flow-GRPO:
one forward over the rows [uncond; cond], then v = v_uncond + g * (v_cond - v_uncond).

Precision: the frozen transformer runs in `dtype` (bf16 on CUDA by default, fp32 on the CPU); the LoRA weights are
always fp32 (as Flow-GRPO keeps its trainable parameters), and the velocity is returned in fp32.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from trainer.models.base import Conditioning, FlowModel

# Flow-GRPO's LoRA target modules for SD3 (scripts/train_sd3.py): every projection of the joint attention.
FLOW_GRPO_LORA_TARGETS: tuple[str, ...] = (
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
)

_ADAPTER_NAME = "default"  # the one peft adapter this model trains
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # the file save_lora writes (diffusers' name)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def saved_lora_shape(directory: str | Path) -> tuple[int, float]:
    """(rank r, alpha) of a LoRA written by `TransformerFlowModel.save_lora`, from its adapter metadata."""
    from safetensors import safe_open

    path = Path(directory) / LORA_WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as handle:
        raw = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    metadata = {key.removeprefix("transformer."): value for key, value in raw.items()}  # diffusers prefixes keys
    if "r" not in metadata:
        raise ValueError(f"{path} carries no LoRA adapter metadata (rank, alpha)")
    return int(metadata["r"]), float(metadata["lora_alpha"])


@dataclass
class TransformerFlowConfig:
    """Settings shared by every SD3-transformer adapter (LoRA, precision, placement)."""

    lora_rank: int = 32  # LoRA rank r (Flow-GRPO: 32)
    lora_alpha: float = 64.0  # LoRA alpha; the low-rank update is scaled by alpha / r (Flow-GRPO: 64)
    lora_target_modules: tuple[str, ...] = field(default=FLOW_GRPO_LORA_TARGETS)  # module-name suffixes that get LoRA
    lora_init_seed: int = 0  # seed of the LoRA A-matrix init (gaussian; B=0), so every process starts identical
    gradient_checkpointing: bool = False  # recompute transformer blocks in backward: less memory, ~30% more compute
    dtype: str = "auto"  # frozen weights' dtype: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # torch device: auto (cuda if available, else cpu) | cpu | cuda | cuda:N


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on CUDA, fp32 elsewhere; else one of fp32 | bf16 | fp16."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


class TransformerFlowModel(FlowModel):
    """A FlowModel over a diffusers SD3Transformer2DModel with one trainable peft LoRA adapter.

    Subclasses implement encode_prompts, latent_shape and decode, and call this __init__ with their transformer."""

    def __init__(self, transformer: torch.nn.Module, config: TransformerFlowConfig):
        from peft import LoraConfig

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        transformer.requires_grad_(False)
        if any(p.dtype != self.dtype for p in transformer.parameters()):
            transformer.to(dtype=self.dtype)
        self.lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                      target_modules=list(config.lora_target_modules))
        # Seeded on the CPU, before moving to the device, so the init does not depend on the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.lora_init_seed)
            transformer.add_adapter(self.lora_config, adapter_name=_ADAPTER_NAME)
        self._lora_params: dict[str, torch.nn.Parameter] = {}
        for name, param in transformer.named_parameters():
            if ".lora_" in name:
                param.data = param.data.float()
                self._lora_params[name.replace(f".{_ADAPTER_NAME}.", ".")] = param
        if not self._lora_params:
            raise ValueError(f"no module of the transformer matches the LoRA targets {config.lora_target_modules}")
        transformer.to(self.device)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.eval()
        self.transformer = transformer
        self._reference_depth = 0

    # --- the policy -------------------------------------------------------------------------------------------

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Conditioning,
                 guidance_scale: float) -> torch.Tensor:
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        timestep = (1000.0 * sigma).expand(batch) if sigma.ndim == 0 else 1000.0 * sigma
        hidden, text, pooled = x, cond.prompt_embeds, cond.pooled
        guided = guidance_scale > 1.0
        if guided:
            if cond.negative_prompt_embeds is None or cond.negative_pooled is None:
                raise ValueError("guidance_scale > 1 needs negative rows: encode_prompts(prompts, with_negative=True)")
            hidden = torch.cat([x, x])
            timestep = torch.cat([timestep, timestep])
            text = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds])
            pooled = torch.cat([cond.negative_pooled, cond.pooled])
        out = self.transformer(
            hidden_states=hidden.to(self.device, self.dtype), timestep=timestep,
            encoder_hidden_states=text.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype), return_dict=False)[0].float()
        if guided:
            uncond, conditional = out.chunk(2)
            out = uncond + guidance_scale * (conditional - uncond)
        return out

    @property
    def base_transformer(self) -> torch.nn.Module:
        """The SD3Transformer2DModel itself, also when the trainer has wrapped `transformer` (DDP keeps `.module`)."""
        return getattr(self.transformer, "module", self.transformer)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """velocity() of the base model: the LoRA adapter is bypassed inside the context (nesting is allowed)."""
        outermost = self._reference_depth == 0
        if outermost:
            self.base_transformer.disable_adapters()
        self._reference_depth += 1
        try:
            yield
        finally:
            self._reference_depth -= 1
            if outermost:
                self.base_transformer.enable_adapters()

    # --- LoRA state -------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._lora_params.values())

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the LoRA weights, keyed as peft's get_peft_model_state_dict names them (adapter name removed):
        e.g. `transformer_blocks.0.attn.to_q.lora_A.weight`."""
        return {key: param.detach().clone() for key, param in self._lora_params.items()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` into the LoRA weights in place (optimizers keep their parameter references)."""
        missing = self._lora_params.keys() - state.keys()
        unexpected = state.keys() - self._lora_params.keys()
        if missing or unexpected:
            raise KeyError(f"LoRA state does not match this model: missing {sorted(missing)[:4]}"
                           f" ({len(missing)}), unexpected {sorted(unexpected)[:4]} ({len(unexpected)})")
        with torch.no_grad():
            for key, param in self._lora_params.items():
                param.copy_(state[key])

    def load_lora(self, directory: str) -> None:
        """Load a LoRA written by `save_lora` (`pytorch_lora_weights.safetensors`, keys `transformer.<module>...`);
        its rank must be this model's (`saved_lora_shape` reads it from the file first)."""
        from safetensors.torch import load_file

        path = Path(directory) / LORA_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no LoRA weights at {path}")
        state = {key.removeprefix("transformer."): value for key, value in load_file(str(path)).items()}
        self.load_lora_state_dict(state)

    def save_lora(self, directory: str) -> None:
        """Write `pytorch_lora_weights.safetensors` (+ the LoRA config as metadata, so alpha/r survive) in the form
        `StableDiffusion3Pipeline.load_lora_weights(directory)` reads."""
        from diffusers import StableDiffusion3Pipeline
        from peft.utils import get_peft_model_state_dict

        peft_state = get_peft_model_state_dict(self.base_transformer, adapter_name=_ADAPTER_NAME)
        layers = {key: value.detach().float().cpu().contiguous() for key, value in peft_state.items()}
        StableDiffusion3Pipeline.save_lora_weights(
            directory, transformer_lora_layers=layers,
            transformer_lora_adapter_metadata=self.base_transformer.peft_config[_ADAPTER_NAME].to_dict())
