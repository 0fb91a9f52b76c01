"""HPSv3's reward model on transformers 5: Qwen2-VL with a (mu, sigma) head read at the `<|Reward|>` token.

What the published model is (MizzenAI/HPSv3, read through the reference index):
- hpsv3/model/qwen2vl_trainer.py, `Qwen2VLRewardModelBT(Qwen2VLForConditionalGeneration)`: with
  rm_head_type "ranknet" and no rm_head_kwargs (hpsv3/config/HPSv3_7B.yaml sets rm_head_type: "ranknet",
  output_dim: 2, reward_token: "special" and no rm_head_kwargs) the head is
  `nn.Sequential(Linear(hidden, 1024), ReLU, Dropout(0.05), Linear(1024, 16), ReLU, Linear(16, output_dim))`,
  kept in float32, applied to the last hidden states; the output at the `<|Reward|>` token is the reward
  (inference.py: "miu and sigma. we select miu as the final output").
- hpsv3/train.py, `create_model_and_processor`: `<|Reward|>` is added to the tokenizer as an additional special
  token and the embeddings are resized to `len(tokenizer)` BEFORE the weights are loaded, so the checkpoint's
  `model.embed_tokens.weight` and `lm_head.weight` have len(tokenizer) rows (151,658 for Qwen2-VL-7B-Instruct),
  not the config's padded vocab_size.
- hpsv3/inference.py: `HPSv3.safetensors` is a flat state dict of the whole model (an optional "model" wrapper key
  is unwrapped) loaded with `load_state_dict(strict=True)`.

Checkpoint key layout. Upstream saved `model.state_dict()` under transformers 4.45 (its requirement), where the class
holds `visual`, `model` (the text decoder) and `lm_head`. Transformers >= 4.52 (and 5) nests both under `model`
(`model.visual`, `model.language_model`). So the published keys are
    visual.*            (vision tower + merger)      -> here model.visual.*
    model.*             (text decoder)               -> here model.language_model.*
    lm_head.weight                                   -> unchanged
    rm_head.{0,3,5}.{weight,bias}                    -> unchanged (Sequential indices of the three Linear layers)
How we know: the head indices follow from the Sequential above; the legacy prefixes follow from the 4.45 class
layout and are what two independent ports of HPSv3 to newer transformers remap (`^visual` -> `model.visual`,
`^model(?!\\.(language_model|visual))` -> `model.language_model`). `published_to_current` / `current_to_published`
implement that mapping; tests save a tiny model in the published layout and load it back through `load_reward_model`,
and check the head's keys against the list above. A checkpoint already in the new layout loads too (keys that
already carry the new prefixes pass through unchanged).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

HEAD_HIDDEN = 1024  # width of the ranknet head's first layer (upstream default)
HEAD_BOTTLENECK = 16  # width of its second layer (upstream default)
OUTPUT_DIM = 2  # (mu, sigma)
PUBLISHED_HEAD_KEYS = (  # the head's keys in HPSv3.safetensors: indices 0, 3, 5 of the Sequential are the Linears
    "rm_head.0.weight", "rm_head.0.bias", "rm_head.3.weight", "rm_head.3.bias", "rm_head.5.weight", "rm_head.5.bias",
)

_TO_CURRENT = ((re.compile(r"^visual\."), "model.visual."),
               (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."))
_TO_PUBLISHED = ((re.compile(r"^model\.visual\."), "visual."), (re.compile(r"^model\.language_model\."), "model."))


def _rename(state_dict: Mapping[str, Any], rules: tuple) -> dict[str, Any]:
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            new_key, hits = pattern.subn(replacement, key, count=1)
            if hits:
                key = new_key
                break
        renamed[key] = value
    return renamed


def published_to_current(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of HPSv3.safetensors (transformers 4.45 layout) -> keys of `HPSv3RewardModel` on transformers 5."""
    return _rename(state_dict, _TO_CURRENT)


def current_to_published(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `published_to_current`: what upstream's `model.state_dict()` would have named each tensor."""
    return _rename(state_dict, _TO_PUBLISHED)


def reward_head(hidden_size: int) -> nn.Sequential:
    """HPSv3's ranknet head (upstream defaults): hidden -> 1024 -> 16 -> (mu, sigma)."""
    return nn.Sequential(
        nn.Linear(hidden_size, HEAD_HIDDEN),
        nn.ReLU(),
        nn.Dropout(0.05),
        nn.Linear(HEAD_HIDDEN, HEAD_BOTTLENECK),
        nn.ReLU(),
        nn.Linear(HEAD_BOTTLENECK, OUTPUT_DIM),
    )


class HPSv3RewardModel(Qwen2VLForConditionalGeneration):
    """Qwen2-VL + the float32 (mu, sigma) head. `reward_token_id` is set by the loader once the tokenizer knows it."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.rm_head = reward_head(config.get_text_config().hidden_size).to(torch.float32)
        self.reward_token_id: int | None = None

    @torch.no_grad()
    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
               image_grid_thw: torch.Tensor) -> torch.Tensor:
        """(batch, 2) float32 (mu, sigma), read at each sequence's `<|Reward|>` token."""
        if self.reward_token_id is None:
            raise RuntimeError("reward_token_id is unset: load the model with load_reward_model")
        # Modality of each token (1 = image, 0 = text), what Qwen2VLProcessor returns for M-RoPE position ids.
        mm_token_type_ids = (input_ids == self.config.image_token_id).to(torch.int32)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                            image_grid_thw=image_grid_thw, mm_token_type_ids=mm_token_type_ids).last_hidden_state
        at_reward = input_ids == self.reward_token_id
        if not bool((at_reward.sum(dim=1) == 1).all()):
            raise ValueError("every sequence must hold exactly one <|Reward|> token")
        # Upstream runs the head under float32 autocast on the bf16 hidden states; only the reward position matters.
        return self.rm_head(hidden[at_reward].float())
