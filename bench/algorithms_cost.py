"""Cost of each GRPO algorithm per training step, measured side by side on the tiny SD3 (real architecture).

For flow_grpo, flow_grpo_fixed, tempflow (deduplicated training) and pave at the papers' sampling settings
(docs/algorithms.md sections 2-4: step counts, G / seeds x B / K / S, CFG) with one prompt per step, on the tiny SD3
built from config at a small resolution, it prints per step:
  - NFE per trained sample: model forwards (sampling + training + reference; CFG = 2) / trained samples, where a
    trained sample is an image whose advantage enters the loss (Flow-GRPO: a trajectory; TempFlow / Pave: a branch);
  - reward calls: images sent to the reward services;
  - wall time: rollout + advantages + the full training pass (loss + backward over every unit) + one optimizer step.
Then the TempFlow training pass deduplicated (one forward per (seed, branch step), invariant 9) against the
official duplicated one (one forward per branch) on the same batch, timed alternately, and their ratio.

The reward is an analytic in-process function of the images (no service), so wall time is model work only.
Usage: python bench/algorithms_cost.py [--resolution 16] [--repeats 3] [--threads 1] [--small]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.advantages import local_gather  # noqa: E402
from trainer.algorithms.registry import build_algorithm  # noqa: E402
from trainer.models.sd3 import SD3Config, SD3FlowModel  # noqa: E402
from trainer.models.tiny_sd3 import build_tiny_sd3  # noqa: E402

PROMPT = ["a red cube"]


def paper_settings(small: bool) -> dict[str, dict]:
    """Section 2-4 sampling settings; --small shrinks group sizes (not the step structure) for a quick run."""
    if small:
        return {
            "flow_grpo": dict(num_steps=10, group_size=6, guidance_scale=4.5, beta=0.04, train_batch_size=6),
            "flow_grpo_fixed": dict(num_steps=10, group_size=6, guidance_scale=4.5, beta=0.04, train_batch_size=6),
            "tempflow": dict(num_steps=10, seeds_per_prompt=1, num_branches=6, guidance_scale=4.5, beta=0.004,
                             train_batch_size=3),
            "pave": dict(num_steps=16, num_branches=6, branch_steps=(0, 2, 4, 6), decomposition=(2, 3)),
        }
    return {
        "flow_grpo": dict(num_steps=10, group_size=24, guidance_scale=4.5, beta=0.04, train_batch_size=6),
        "flow_grpo_fixed": dict(num_steps=10, group_size=24, guidance_scale=4.5, beta=0.04, train_batch_size=6),
        "tempflow": dict(num_steps=10, seeds_per_prompt=4, num_branches=6, guidance_scale=4.5, beta=0.004,
                         train_batch_size=3),
        "pave": dict(num_steps=16, num_branches=12, branch_steps=(0, 2, 4, 6), decomposition=(2, 3)),
    }


def rewards_for(images: torch.Tensor) -> torch.Tensor:
    rgb = images.float() / 255.0
    return (rgb[..., 0] - rgb[..., 2]).mean(dim=(1, 2))


def training_pass(algo, model, batch, optimizer) -> float:
    """Seconds for loss + backward over every unit, then one optimizer step."""
    start = time.perf_counter()
    for unit in algo.training_units(batch, torch.Generator().manual_seed(1)):
        loss, _ = algo.loss(model, unit)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def one_step(name: str, config: dict, model, initial_lora) -> dict:
    model.load_lora_state_dict(initial_lora)
    algo = build_algorithm(name, config)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3)
    start = time.perf_counter()
    rollout = algo.rollout(model, PROMPT, [None], torch.Generator().manual_seed(0))
    batch = algo.prepare_training(rollout, rewards_for(rollout.query.images), local_gather)
    training_pass(algo, model, batch, optimizer)
    wall = time.perf_counter() - start
    c = algo.cost
    total = c.model_nfe()
    return {"algo": name, "sampling_nfe": c.sampling_nfe, "training_nfe": c.training_nfe,
            "reference_nfe": c.reference_nfe, "trained": c.trained_samples, "nfe_per_trained": total / c.trained_samples,
            "reward_calls": c.reward_images, "wall_s": wall}


def dedup_speedup(config: dict, model, initial_lora, repeats: int) -> dict:
    """The same TempFlow batch trained deduplicated and duplicated, alternately, `repeats` times each."""
    model.load_lora_state_dict(initial_lora)
    algos = {mode: build_algorithm("tempflow", {**config, "deduplicate_training": mode == "dedup"})
             for mode in ("dedup", "duplicated")}
    rollout = algos["dedup"].rollout(model, PROMPT, [None], torch.Generator().manual_seed(0))
    batch = algos["dedup"].prepare_training(rollout, rewards_for(rollout.query.images), local_gather)
    times: dict[str, list[float]] = {"dedup": [], "duplicated": []}
    nfe: dict[str, int] = {}
    for _ in range(repeats):
        for mode, algo in algos.items():
            model.load_lora_state_dict(initial_lora)
            optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3)
            before = algo.cost.training_nfe + algo.cost.reference_nfe
            times[mode].append(training_pass(algo, model, batch, optimizer))
            nfe[mode] = algo.cost.training_nfe + algo.cost.reference_nfe - before
    dedup, dup = statistics.median(times["dedup"]), statistics.median(times["duplicated"])
    return {"dedup_s": dedup, "duplicated_s": dup, "speedup": dup / dedup, "dedup_nfe": nfe["dedup"],
            "duplicated_nfe": nfe["duplicated"], "branches": config["num_branches"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=16, help="tiny SD3 image size in pixels (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each TempFlow training pass")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--small", action="store_true", help="smaller groups (same step structure) for a quick run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    settings = paper_settings(args.small)
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_tiny_sd3(tmp)
        model = SD3FlowModel(str(directory), SD3Config(resolution=args.resolution, max_sequence_length=32,
                                                       lora_rank=4, lora_alpha=8.0, device="cpu"))
    initial_lora = {k: v.clone() for k, v in model.lora_state_dict().items()}
    print(f"tiny SD3 at {args.resolution}px (latent {model.latent_shape()}), {args.threads} thread(s), "
          f"1 prompt per step, settings {'--small' if args.small else 'of the papers'}")
    header = (f"{'algorithm':<16}{'sampling NFE':>13}{'train NFE':>10}{'ref NFE':>9}{'trained':>9}"
              f"{'NFE/trained':>12}{'reward calls':>13}{'wall s/step':>12}")
    print(header)
    rows = [one_step(name, cfg, model, initial_lora) for name, cfg in settings.items()]
    for r in rows:
        print(f"{r['algo']:<16}{r['sampling_nfe']:>13}{r['training_nfe']:>10}{r['reference_nfe']:>9}"
              f"{r['trained']:>9}{r['nfe_per_trained']:>12.1f}{r['reward_calls']:>13}{r['wall_s']:>12.2f}")
    base = rows[0]
    for r in rows[1:]:
        print(f"  {r['algo']} / flow_grpo: wall x{r['wall_s'] / base['wall_s']:.2f}, "
              f"reward calls x{r['reward_calls'] / base['reward_calls']:.2f}, "
              f"NFE/trained x{r['nfe_per_trained'] / base['nfe_per_trained']:.2f}")
    s = dedup_speedup(settings["tempflow"], model, initial_lora, args.repeats)
    print(f"TempFlow training pass (B={s['branches']}): deduplicated {s['dedup_s']:.3f}s ({s['dedup_nfe']} NFE) vs "
          f"duplicated {s['duplicated_s']:.3f}s ({s['duplicated_nfe']} NFE): speedup x{s['speedup']:.2f} "
          f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
