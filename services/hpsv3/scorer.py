"""HPSv3 as a served Scorer: value = mu, components mu and sigma (HPSv3's predicted preference and its uncertainty).

`prepare` (run by the server core beside the previous forward) renders each item's conversation, resizes the image
to HPSv3's pixel budget with Qwen2-VL's image processor and expands `<|image_pad|>` to one token per merged patch
(what Qwen2VLProcessor does; that class needs torchvision, which this environment cannot have). `score_prepared`
runs one forward over the padded batch. bf16 on GPU, float32 on CPU, unless `dtype` says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from services.common.scorer import Scorer, ScorerInfo, ScorerInput, ScorerOutput
from services.hpsv3.loading import LoadedHPSv3, load_reward_model
from services.hpsv3.prompt import conversation, expand_image_pads

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class HPSv3Config:
    """Where HPSv3's weights are and how to run them."""

    model: str = "Qwen/Qwen2-VL-7B-Instruct"  # base model directory or hub id (config, tokenizer, chat template)
    checkpoint: str = "MizzenAI/HPSv3"  # HPSv3.safetensors, a directory holding it, or its hub repo id
    device: str = "auto"  # "cuda", "cuda:1", "cpu" or "auto" (cuda when available)
    dtype: str = "auto"  # "bfloat16", "float16", "float32" or "auto" (bfloat16 on GPU, float32 on CPU)


@dataclass
class PreparedBatch:
    """Model inputs of one batch, on the CPU."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, pixel_values, image_grid_thw


class HPSv3Scorer(Scorer):
    """HPSv3 (Qwen2-VL-7B-Instruct + reward head) behind the common server."""

    def __init__(self, config: HPSv3Config) -> None:
        self.config = config
        self.device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if self.device.startswith("cuda")
                                                                  else "float32")
        if dtype_name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or auto, got {config.dtype!r}")
        self.dtype_name = dtype_name
        self.loaded: LoadedHPSv3 | None = None

    def setup(self) -> None:
        self.loaded = load_reward_model(self.config.model, self.config.checkpoint, DTYPES[self.dtype_name],
                                        self.device)

    def _loaded(self) -> LoadedHPSv3:
        if self.loaded is None:
            raise RuntimeError("HPSv3Scorer.setup() has not run")
        return self.loaded

    def prepare(self, items: list[ScorerInput]) -> PreparedBatch:
        loaded = self._loaded()
        images = loaded.image_processor(images=[np.ascontiguousarray(item.image) for item in items],
                                        return_tensors="pt")
        merge = loaded.image_processor.merge_size ** 2
        texts = []
        for item, grid in zip(items, images["image_grid_thw"]):
            rendered = loaded.tokenizer.apply_chat_template(conversation(item.prompt), tokenize=False,
                                                            add_generation_prompt=True)
            texts.append(expand_image_pads(rendered, int(grid.prod()) // merge))
        tokens = loaded.tokenizer(texts, padding=True, return_tensors="pt")
        return PreparedBatch({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                              "pixel_values": images["pixel_values"], "image_grid_thw": images["image_grid_thw"]})

    def score_prepared(self, prepared: PreparedBatch, items: list[ScorerInput]) -> list[ScorerOutput]:
        loaded = self._loaded()
        inputs = {name: tensor.to(self.device) for name, tensor in prepared.inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(DTYPES[self.dtype_name])
        with torch.inference_mode():
            mu_sigma = loaded.model.reward(**inputs).cpu()
        return [ScorerOutput(value=float(mu), components={"mu": float(mu), "sigma": float(sigma)})
                for mu, sigma in mu_sigma.tolist()]

    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        return self.score_prepared(self.prepare(items), items)

    def info(self) -> ScorerInfo:
        return ScorerInfo(
            name="hpsv3",
            model=f"{self.config.model} + {self.config.checkpoint}",
            revision=self._loaded().revision,
            dtype=self.dtype_name,
            device=self.device,
            score_min=-5.0,
            score_max=15.0,
            description="HPSv3 human preference: value = mu (higher is preferred); sigma is the model's uncertainty",
            components=["mu", "sigma"],
        )

    def warmup_inputs(self) -> list[ScorerInput]:
        return [ScorerInput(image=np.full((448, 448, 3), 127, dtype=np.uint8), prompt="a photo")]


def scorer_from_arguments(args: Any) -> HPSv3Scorer:
    """The scorer `python -m services.hpsv3` builds from its flags."""
    return HPSv3Scorer(HPSv3Config(model=args.model, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype))
