"""Where a shapes model's held-out GenEval failures come from: the detector's confidence, or the composition.

    python bench/geneval_headroom.py                                  # the shipped base, the demo's sampler
    python bench/geneval_headroom.py --lora-dir runs/shapes-demo/run/lora --scales 1 0.5 0.17

Samples the held-out prompts as the demo's before/after evaluation does (trainer.shapes_world.evaluate, same noise)
and scores the same images with GenEval's rules at its confidence thresholds (0.3, 0.9 for counting) multiplied by
each scale (services.geneval.scoring.scaled_thresholds). Scale 1 is GenEval's strict accuracy; at a small scale every
object the shapes detector reports counts, however unclean its outline. The gap between the rows is the part of the
failures that is rendering quality (objects drawn but not cleanly enough to be trusted); what stays wrong at the
smallest scale is composition (count, colour, position) or objects not drawn at all. Printed: one row per scale,
strict accuracy per tag and overall (the mean over tags); then the mean graded credit (the service's `--reward graded`)
of the same images; last "best of N": a prompt counts as correct when any of its N samples is strictly correct (scale
1), the accuracy of a model that always drew its best sample. Its gap to the scale-1 row is what RL could gain by only
concentrating the model's probability on outputs it already produces; beyond it the model has to learn something new.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.geneval.scoring import TAGS, ScoringConfig, scaled_thresholds, summarize  # noqa: E402
from trainer.shapes_world.evaluate import EvalConfig, evaluate, load_model, shapes_geneval_values  # noqa: E402


def print_row(label: str, summary: dict[str, float]) -> None:
    print(f"{label:<16}" + "".join(f"{summary[t]:>14.3f}" for t in TAGS) + f"{summary['overall']:>9.3f}")


def best_of_samples(correct: list[float], samples: int) -> list[bool]:
    """Per prompt, whether any of its `samples` consecutive strict results (0 or 1) is 1 (the evaluation's image
    order)."""
    if len(correct) % samples:
        raise ValueError(f"{len(correct)} results are not whole groups of {samples} samples")
    return [any(value >= 1 for value in correct[i: i + samples]) for i in range(0, len(correct), samples)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default="", help="shapes checkpoint; empty = the shipped base model")
    parser.add_argument("--lora-dir", default="", help="a LoRA saved by the trainer, applied to the model")
    parser.add_argument("--samples", type=int, default=8, help="images per held-out prompt (the demo's)")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps (the demo's)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation noise seed (the demo's)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.17],
                        help="multipliers of GenEval's confidence thresholds, one row each")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = EvalConfig(model_dir=args.model_dir, lora_dir=args.lora_dir, samples=args.samples, steps=args.steps,
                        guidance=3.0, shift=1.0, seed=args.seed)
    _, images, entries = evaluate(load_model(args.model_dir, args.lora_dir or None), config)
    tags = [e["tag"] for e in entries]
    strict_by_scale = {  # scale 1 is also the best-of row's: each scale is scored once
        scale: shapes_geneval_values(images, entries, "strict", scaled_thresholds(ScoringConfig(), scale))
        for scale in {1.0, *args.scales}}
    print(f"{'threshold scale':<16}" + "".join(f"{t:>14}" for t in TAGS) + f"{'overall':>9}")
    for scale in args.scales:
        print_row(f"{scale:g}", summarize(tags, strict_by_scale[scale]))
    print_row("graded credit", summarize(tags, shapes_geneval_values(images, entries, "graded")))
    print_row(f"best of {args.samples}",
              summarize(tags[::args.samples], best_of_samples(strict_by_scale[1.0], args.samples)))


if __name__ == "__main__":
    main()
