"""Find HPSv3's two weight sources locally and build the reward model from them; never downloads.

- the base model directory (Qwen2-VL-7B-Instruct: config, tokenizer, chat template, image preprocessor config) —
  a local directory, or a hub id resolved in the Hugging Face cache (`HF_HOME`) with local_files_only;
- the reward checkpoint `HPSv3.safetensors` — a local file, or a hub repo id (MizzenAI/HPSv3) resolved in the cache.
Anything missing raises `WeightsNotFoundError` naming where it looked and the command that fetches it once.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from services.common.scorer import WeightsNotFoundError
from services.hpsv3.model import HPSv3RewardModel, published_to_current
from services.hpsv3.prompt import PIXELS, REWARD_TOKEN

CHECKPOINT_FILE = "HPSv3.safetensors"  # the file name in the MizzenAI/HPSv3 hub repo


def _hf_cache() -> str:
    """The hub cache directory, read from the environment at call time (HF_HUB_CACHE, else HF_HOME/hub)."""
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def resolve_model_dir(model: str) -> Path:
    """A directory holding the base model: `model` itself, or its snapshot in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"{path} has no config.json; pass the Qwen2-VL-7B-Instruct directory")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True, cache_dir=_hf_cache()))
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError (not a repo id), ...
        raise WeightsNotFoundError(
            f"base model {model!r} is neither a directory nor in the Hugging Face cache {_hf_cache()} ({error}). "
            f"Fetch it once: `hf download Qwen/Qwen2-VL-7B-Instruct` (or pass --model /path/to/Qwen2-VL-7B-Instruct)"
        ) from error


def resolve_checkpoint(checkpoint: str) -> Path:
    """The HPSv3.safetensors file: `checkpoint` itself, a directory holding it, or a hub repo id in the cache."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(checkpoint, CHECKPOINT_FILE, local_files_only=True, cache_dir=_hf_cache()))
    except Exception as error:
        raise WeightsNotFoundError(
            f"HPSv3 checkpoint {checkpoint!r} is neither a file, a directory holding {CHECKPOINT_FILE}, nor in the "
            f"Hugging Face cache {_hf_cache()} ({error}). Fetch it once: "
            f"`hf download MizzenAI/HPSv3 {CHECKPOINT_FILE}` (or pass --checkpoint /path/to/{CHECKPOINT_FILE})"
        ) from error


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The base tokenizer plus `<|Reward|>` (as upstream adds it), with Qwen2-VL's chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    if not tokenizer.chat_template:
        template_file = model_dir / "chat_template.json"
        if not template_file.is_file():
            raise WeightsNotFoundError(f"{model_dir} has no chat template (tokenizer_config.json or chat_template.json)")
        tokenizer.chat_template = json.loads(template_file.read_text())["chat_template"]
    return tokenizer


def load_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor at HPSv3's fixed pixel budget (PIL backend: no torchvision needed).

    Patch 14, merge 2, temporal patch 2 and the CLIP mean/std are Qwen2-VL's fixed values (its
    preprocessor_config.json), so they are the processor's defaults; only the pixel budget is HPSv3's."""
    return Qwen2VLImageProcessorPil(min_pixels=PIXELS, max_pixels=PIXELS)


def file_digest(path: Path, length: int = 12) -> str:
    """A short sha256 of a weights file's first and last MiB plus its size (cheap for 16 GB files)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:length]


@dataclass
class LoadedHPSv3:
    """Everything the scorer needs, on its device."""

    model: HPSv3RewardModel  # eval mode, backbone in `dtype`, head in float32
    tokenizer: Any  # base tokenizer + <|Reward|>
    image_processor: Qwen2VLImageProcessorPil  # at HPSv3's pixel budget
    revision: str  # short digest of the checkpoint file


def load_reward_model(model: str, checkpoint: str, dtype: torch.dtype, device: str) -> LoadedHPSv3:
    """Build HPSv3 from the base model's config (no base weights are read: the checkpoint holds the whole model)."""
    model_dir = resolve_model_dir(model)
    checkpoint_path = resolve_checkpoint(checkpoint)
    tokenizer = load_tokenizer(model_dir)
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Allocate on the target device without random initialisation: every tensor is overwritten below.
        with torch.device(device), no_init_weights():
            reward_model = HPSv3RewardModel(config)
    finally:
        torch.set_default_dtype(default_dtype)
    reward_model.resize_token_embeddings(len(tokenizer))  # upstream resizes before loading, so the rows match
    state_dict = load_file(str(checkpoint_path), device="cpu")
    if "model" in state_dict and len(state_dict) == 1:  # upstream unwraps an optional {"model": ...}
        state_dict = state_dict["model"]
    state_dict = published_to_current(state_dict)
    expected = set(reward_model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise WeightsNotFoundError(
            f"{checkpoint_path} does not match HPSv3 on {model_dir}: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    reward_model.load_state_dict(state_dict, strict=True)
    reward_model.rm_head.to(torch.float32)
    reward_model.reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    reward_model.eval()
    return LoadedHPSv3(reward_model, tokenizer, load_image_processor(), file_digest(checkpoint_path))
