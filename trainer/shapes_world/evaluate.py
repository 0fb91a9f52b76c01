"""Held-out GenEval accuracy of a shapes checkpoint, in process (no service): sample, detect, score per tag.

    python -m trainer.shapes_world.evaluate --model-dir trainer/shapes_world/base_model --samples 8 \\
        --steps 20 --guidance 3 --grid /tmp/heldout_grid.png

Samples every held-out prompt `samples` times with Euler steps on a uniform sigma grid (sigma 1 -> 0, `--shift`) and
classifier-free guidance, through `ShapesFlowModel` (the FlowModel the trainer uses); scores each image with
GenEval's strict rules (services.geneval.scoring) over the shapes detector; prints the accuracy per tag and the
overall (mean over tags, as GenEval reports it) as one JSON line; `--partial` adds the mean partial credit per tag
of the same images (the demo's training reward, next to the accuracy it is meant to raise). `--grid` writes a PNG,
one row per prompt (trainer/shapes_world/base_model_heldout_samples.png is that grid for the shipped model with the
command above).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.dataclass_cli import add_dataclass_arguments, dataclass_from_namespace
from trainer.models.base import FlowModel
from trainer.sampling.schedule import uniform_shifted_sigmas
from trainer.shapes_world.prompts import HELDOUT_FILE, Metadata, read_jsonl

if TYPE_CHECKING:
    from services.geneval.scoring import ScoringConfig


@dataclass
class EvalConfig:
    """What is sampled and how."""

    model_dir: str = ""  # checkpoint directory; empty = the shipped base model
    lora_dir: str = ""  # a LoRA saved by the trainer (e.g. runs/x/lora) applied to the model; empty = none
    prompt_file: str = str(HELDOUT_FILE)  # GenEval metadata JSONL
    samples: int = 8  # images per prompt
    steps: int = 20  # Euler steps
    guidance: float = 3.0  # CFG scale (1 = off)
    shift: float = 1.0  # SD3 time shift of the uniform sigma grid (1 = none; the trainer's default is 3)
    seed: int = 0  # seeds the initial noise
    batch: int = 256  # images per forward
    grid: str = ""  # PNG path of a sample grid (one row per prompt); empty = none
    threads: int = 1  # torch CPU threads
    partial: bool = False  # also report the mean partial credit per tag (the demo's training reward) of the same images


def shapes_geneval_values(images: np.ndarray, entries: list[Metadata], reward: str = "strict",
                          scoring: ScoringConfig | None = None) -> list[float]:
    """GenEval's value of each image (`reward`: 'strict' 0/1, 'partial' or 'graded' credit) with the shapes
    detector, in process: the GenEval service's scorer without the service. `scoring`: thresholds (GenEval's when
    None)."""
    from services.common.scorer import ScorerInput
    from services.geneval.scorer import GenEvalScorer, GenEvalScorerConfig
    from services.geneval.scoring import ScoringConfig
    from services.geneval.shapes_detector import ShapesDetector

    scorer = GenEvalScorer(ShapesDetector(), GenEvalScorerConfig(reward=reward, scoring=scoring or ScoringConfig()))
    scorer.setup()
    outputs = scorer.score([ScorerInput(image, e["prompt"], e) for image, e in zip(images, entries)])
    return [float(o.value) for o in outputs]


def geneval_summary(images: np.ndarray, entries: list[Metadata], reward: str = "strict"
                    ) -> tuple[dict[str, float], list[float]]:
    """(GenEval summary: the mean of `reward` ('strict' = accuracy, 'partial' credit) per tag + overall, the
    per-image values) with the shapes detector."""
    from services.geneval.scoring import summarize

    values = shapes_geneval_values(images, entries, reward)
    return summarize([e["tag"] for e in entries], values), values


@torch.no_grad()
def sample(model: FlowModel, prompts: list[str], steps: int, guidance: float, generator: torch.Generator,
           shift: float = 1.0) -> torch.Tensor:
    """Euler sampling through FlowModel.velocity on the shifted uniform sigma grid (trainer.sampling.schedule's
    uniform_shifted_sigmas; shift 1 = linspace(1, 0, steps + 1)); uint8 [B, H, W, 3]."""
    cond = model.encode_prompts(prompts, with_negative=guidance > 1.0)
    x = torch.randn(len(prompts), *model.latent_shape(), generator=generator).to(model.device)
    sigmas = uniform_shifted_sigmas(steps, shift)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + float(sigma_next - sigma) * model.velocity(x, float(sigma), cond, guidance)
    return model.decode(x)


def load_model(model_dir: str = "", lora_dir: str | None = None, device: str = "cpu") -> FlowModel:
    """The shapes model at `model_dir` (empty = the shipped base), with a LoRA saved by the trainer when given."""
    from trainer.models.shapes import ShapesConfig, ShapesFlowModel
    from trainer.models.transformer_flow import saved_lora_shape

    lora_shape = {}
    if lora_dir:
        rank, alpha = saved_lora_shape(lora_dir)
        lora_shape = {"lora_rank": rank, "lora_alpha": alpha}
    model = ShapesFlowModel(model_dir or None, ShapesConfig(device=device, **lora_shape))
    if lora_dir:
        model.load_lora(lora_dir)
    return model


def evaluate(model: FlowModel, config: EvalConfig) -> tuple[dict[str, float], np.ndarray, list[Metadata]]:
    entries = [e for e in read_jsonl(config.prompt_file) for _ in range(config.samples)]
    generator = torch.Generator().manual_seed(config.seed)
    images = [sample(model, [e["prompt"] for e in entries[i: i + config.batch]], config.steps, config.guidance,
                     generator, config.shift) for i in range(0, len(entries), config.batch)]
    images = torch.cat(images).numpy()
    summary, _ = geneval_summary(images, entries)
    return summary, images, entries


def evaluate_checkpoint(config: EvalConfig) -> tuple[dict[str, float], np.ndarray, list[Metadata]]:
    """Load `config.model_dir` (+ `config.lora_dir`), evaluate it, write the grid when `config.grid` is set;
    (strict accuracy per tag + overall, uint8 images, the metadata of each image)."""
    from trainer.image_grid import save_grid

    summary, images, entries = evaluate(load_model(config.model_dir, config.lora_dir or None), config)
    if config.grid:
        save_grid(images, config.grid, columns=config.samples)
    return summary, images, entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, EvalConfig)
    config = dataclass_from_namespace(EvalConfig, vars(parser.parse_args(argv)))
    torch.set_num_threads(config.threads)
    summary, images, entries = evaluate_checkpoint(config)
    report = {"heldout_strict": summary}
    if config.partial:
        report["heldout_partial"], _ = geneval_summary(images, entries, "partial")
    print(json.dumps({**{name: {k: round(v, 4) for k, v in values.items()} for name, values in report.items()},
                      "config": asdict(config)}))


if __name__ == "__main__":
    main()
