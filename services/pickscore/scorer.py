"""PickScore (Kirstain et al. 2023) as a `Scorer`: a CLIP-H model fine-tuned on Pick-a-Pic human preferences.

score = logit_scale.exp() * cosine(image_embedding, text_embedding): the raw logit of the reference implementation
(about 100 * cosine, so real images land near 18-24), before any softmax across candidates. `info()` reports the
scale. Weights load with transformers' `from_pretrained` from a local directory or the Hugging Face cache (HF_HOME,
HF_HUB_OFFLINE honoured); nothing missing is ever replaced silently: setup() raises WeightsNotFoundError saying
where it looked and how to provide the weights. fp16 (or bf16) on GPU, fp32 on CPU.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from services.common.scorer import Scorer, ScorerInfo, ScorerInput, ScorerOutput, WeightsNotFoundError

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"  # the PickScore checkpoint (CLIPModel)
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the processor PickScore was trained with
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _where_it_looked(source: str) -> str:
    from huggingface_hub import constants

    local = Path(source).expanduser()
    local_note = (f"local directory {local.resolve()} exists but has no loadable files" if local.is_dir()
                  else f"no local directory {local.resolve()}")
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    return (f"{local_note}; Hugging Face cache {constants.HF_HUB_CACHE} (HF_HOME={os.environ.get('HF_HOME', 'unset')}"
            f", HF_HUB_OFFLINE={offline})")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists() or source.count("/") != 1


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_provide(source: str, flag: str) -> str:
    if _looks_like_path(source):
        return (f"pass {flag} a directory written by save_pretrained (config + weights), or a hub id whose files "
                "are in the Hugging Face cache")
    return (f"download it on a machine with network (`hf download {source}` or `huggingface-cli download {source}`) "
            f"into the cache and mount it here (HF_HOME), or pass {flag} /path/to/a/save_pretrained/directory")


class PickScoreScorer(Scorer):
    """The PickScore reward: logit_scale.exp() * cosine(image, text) of a CLIPModel."""

    def __init__(self, model: str = DEFAULT_MODEL, processor: str | None = DEFAULT_PROCESSOR, device: str = "auto",
                 dtype: str = "auto") -> None:
        self.model_source = model  # local path or hub id of the CLIPModel weights
        self.processor_source = processor or model  # local path or hub id of the CLIP processor
        self.requested_device = device  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
        self.requested_dtype = dtype  # "auto" (float16 on GPU, float32 on CPU), "float32", "float16", "bfloat16"
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._revision = ""
        self._scale = float("nan")

    def _load(self, what: str, source: str, flag: str, loader) -> Any:
        try:
            return loader(source)
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(
                f"could not load the PickScore {what} from {source!r} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Looked at: {_where_it_looked(source)}. "
                f"To provide it: {_how_to_provide(source, flag)}.") from error

    def setup(self) -> None:
        import torch
        from transformers import AutoProcessor, CLIPModel

        device = self.requested_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        dtype_name = self.requested_dtype
        if dtype_name == "auto":
            dtype_name = "float16" if self._device.type == "cuda" else "float32"
        if dtype_name not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {dtype_name!r}")
        self._dtype = getattr(torch, _DTYPES[dtype_name])
        local_only = _offline()  # honoured even when HF_HUB_OFFLINE was set after huggingface_hub was imported
        self._processor = self._load("processor", self.processor_source, "--processor",
                                     lambda source: AutoProcessor.from_pretrained(source, local_files_only=local_only))
        model = self._load("model", self.model_source, "--model",
                           lambda source: CLIPModel.from_pretrained(source, dtype=self._dtype,
                                                                    local_files_only=local_only))
        self._model = model.to(self._device).eval()
        self._scale = float(self._model.logit_scale.detach().float().exp().item())
        self._revision = getattr(self._model.config, "_commit_hash", None) or self._local_digest()

    def _local_digest(self) -> str:
        config = Path(self.model_source).expanduser() / "config.json"
        if config.is_file():
            return "sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()[:16]
        return ""

    def prepare(self, items: list[ScorerInput]) -> Any:
        """Resize/normalise images and tokenise prompts (CPU), ready for the forward."""
        return self._processor(images=[item.image for item in items], text=[item.prompt for item in items],
                               padding=True, truncation=True, max_length=77, return_tensors="pt")

    def score_prepared(self, prepared: Any, items: list[ScorerInput]) -> list[ScorerOutput]:
        import torch

        with torch.inference_mode():
            pixel_values = prepared["pixel_values"].to(self._device, dtype=self._dtype, non_blocking=True)
            input_ids = prepared["input_ids"].to(self._device)
            attention_mask = prepared["attention_mask"].to(self._device)
            image_embeds = self._model.get_image_features(pixel_values=pixel_values)
            text_embeds = self._model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            image_embeds = getattr(image_embeds, "pooler_output", image_embeds).float()
            text_embeds = getattr(text_embeds, "pooler_output", text_embeds).float()
            cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
            cosine = cosine.cpu().tolist()
        return [ScorerOutput(value=self._scale * c, components={"cosine": c}) for c in cosine]

    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        return self.score_prepared(self.prepare(items), items)

    def info(self) -> ScorerInfo:
        dtype = str(self._dtype).removeprefix("torch.") if self._dtype is not None else ""
        return ScorerInfo(
            name="pickscore", model=self.model_source, revision=self._revision, dtype=dtype, device=str(self._device),
            score_min=-self._scale, score_max=self._scale,
            description=(f"PickScore: logit_scale.exp() * cosine(image, text) with logit_scale.exp() = "
                         f"{self._scale:.4g} (the raw reference logit, no softmax across candidates); "
                         f"component 'cosine' is the unscaled cosine; processor {self.processor_source}"),
            components=["cosine"])
