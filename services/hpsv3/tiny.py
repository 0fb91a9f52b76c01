"""A tiny HPSv3 of the real architecture, built from config, for tests and benchmarks (no downloads).

`build_tiny_hpsv3(root)` writes, like the real weights:
- `root/base/`: a Qwen2-VL base model directory (config.json with a 2-layer text decoder and a 1-block vision tower,
  a byte-level Qwen2 tokenizer with Qwen2-VL's special tokens and Qwen2-VL-7B-Instruct's chat template);
- `root/HPSv3.safetensors`: the whole reward model (backbone + head) in the published key layout
  (services.hpsv3.model: `visual.*`, `model.*`, `lm_head.weight`, `rm_head.{0,3,5}.*`), with the embeddings resized
  to the tokenizer plus `<|Reward|>`, as upstream saves them.
Sizes are parameters so the benchmark can build larger ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2TokenizerFast, Qwen2VLConfig

from services.hpsv3.model import HPSv3RewardModel, current_to_published
from services.hpsv3.prompt import REWARD_TOKEN

# Qwen2-VL-7B-Instruct's chat template (its tokenizer_config.json / chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                           "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                           "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class TinyHPSv3Size:
    """Sizes of a small HPSv3 (the real one: hidden 3584, 28 layers; vision 1280 wide, 32 blocks)."""

    hidden: int = 32  # text decoder width (and the vision merger's output width)
    layers: int = 2  # text decoder layers
    heads: int = 4  # text attention heads (head dim = hidden / heads; mrope sections split head_dim / 2)
    vision_width: int = 32  # vision tower width
    vision_depth: int = 1  # vision tower blocks
    vision_heads: int = 4  # vision attention heads


def byte_level_tokenizer() -> Qwen2TokenizerFast:
    """A Qwen2 byte-level BPE tokenizer over the 256 byte symbols (no merges) with Qwen2-VL's special tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], unk_token=None, bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN2_VL_SPECIAL_TOKENS)})
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer: Qwen2TokenizerFast, size: TinyHPSv3Size) -> Qwen2VLConfig:
    half = size.hidden // size.heads // 2  # rotary pairs per head
    spatial = (3 * half) // 8  # M-RoPE splits them (temporal, height, width) like Qwen2-VL-7B's [16, 24, 24]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer) + 6,  # padded past the tokenizer, like the real 152,064
            "hidden_size": size.hidden, "intermediate_size": 2 * size.hidden, "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads, "num_key_value_heads": max(1, size.heads // 2),
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                "mrope_section": [half - 2 * spatial, spatial, spatial]},
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={"depth": size.vision_depth, "embed_dim": size.vision_width, "hidden_size": size.hidden,
                       "num_heads": size.vision_heads, "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_tiny_hpsv3(root: Path, size: TinyHPSv3Size = TinyHPSv3Size(), seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny base model directory and HPSv3.safetensors under `root`; returns (base_dir, checkpoint)."""
    root = Path(root)
    base_dir, checkpoint = root / "base", root / "HPSv3.safetensors"
    tokenizer = byte_level_tokenizer()
    config = tiny_config(tokenizer, size)
    base_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(seed)
    model = HPSv3RewardModel(config)
    with_reward = len(tokenizer) + len(set([REWARD_TOKEN]) - set(tokenizer.get_vocab()))
    model.resize_token_embeddings(with_reward)
    model.to(torch.bfloat16).rm_head.to(torch.float32)  # upstream saves a bf16 backbone and a float32 head
    state = {key: tensor.contiguous() for key, tensor in current_to_published(model.state_dict()).items()}
    save_file(state, str(checkpoint))
    return base_dir, checkpoint
