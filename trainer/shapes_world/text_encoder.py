"""The shapes model's text encoder: a word-level tokenizer over the world's vocabulary and a tiny transformer.

A prompt is split on whitespace into words of `VOCAB` (an unknown word is an error: the world has no other words),
prefixed by a start token and padded to `max_length`. Token + position embeddings pass through `layers` pre-norm
transformer blocks (padding masked out of attention); the output is the [B, L, width] token embeddings that feed
the SD3 transformer's context stream and a [B, pooled_dim] pooled vector (a projection of the start token's output)
that feeds its pooled-projection input. The empty prompt (start token only) is the unconditional input for CFG.

Saved as `config.json` + `model.safetensors` in one directory (`save_pretrained` / `from_pretrained`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PAD, START = "<pad>", "<start>"
VOCAB: tuple[str, ...] = (  # every word a shapes-world prompt uses (see trainer.shapes_world.prompts)
    "a", "an", "photo", "of", "and",
    "circle", "circles", "square", "squares", "triangle", "triangles",
    "red", "green", "blue", "yellow",
    "two", "three", "four",
    "left", "right", "above", "below",
)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class TextEncoderConfig:
    """Architecture of the shapes text encoder."""

    vocab: tuple[str, ...] = field(default=VOCAB)  # known words (ids follow PAD=0, START=1)
    max_length: int = 12  # tokens per prompt including the start token (longest prompt: 10 words)
    width: int = 128  # token embedding size D = the SD3 transformer's joint_attention_dim
    layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads per block
    pooled_dim: int = 128  # size of the pooled vector = the SD3 transformer's pooled_projection_dim


class _Block(nn.Module):
    """Pre-norm transformer block with a key padding mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


class ShapesTextEncoder(nn.Module):
    """Prompts -> ([B, L, width] token embeddings, [B, pooled_dim] pooled vector)."""

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.token_ids = {word: i for i, word in enumerate((PAD, START, *config.vocab))}
        self.embed = nn.Embedding(len(self.token_ids), config.width)
        self.position = nn.Parameter(torch.randn(config.max_length, config.width) * 0.02)
        self.blocks = nn.ModuleList(_Block(config.width, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.pool = nn.Linear(config.width, config.pooled_dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """[B, max_length] int64 ids: START, the words, then PAD."""
        ids = torch.zeros(len(prompts), self.config.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if len(words) + 1 > self.config.max_length:
                raise ValueError(f"prompt has {len(words)} words, at most {self.config.max_length - 1}: {prompt!r}")
            unknown = [w for w in words if w not in self.token_ids or w in (PAD, START)]
            if unknown:
                raise ValueError(f"words outside the shapes vocabulary {unknown} in {prompt!r}")
            ids[row, : len(words) + 1] = torch.tensor([self.token_ids[START]] + [self.token_ids[w] for w in words])
        return ids

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = ids != self.token_ids[PAD]
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        return x, self.pool(x[:, 0])

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and run on the encoder's device."""
        return self(self.tokenize(prompts).to(self.embed.weight.device))

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ShapesTextEncoder":
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"shapes text encoder: no {name} in {directory}")
        raw = json.loads((directory / CONFIG_NAME).read_text())
        raw["vocab"] = tuple(raw["vocab"])
        encoder = cls(TextEncoderConfig(**raw))
        state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_NAME)).items()}
        encoder.load_state_dict(state)
        return encoder
