"""How much of a TempFlow-GRPO policy gradient is signal, per branch step, on the shapes world.

    python bench/gradient_snr.py                          # branch steps 0, 1, 2, 4 alone; 48 prompts x 12 branches
    python bench/gradient_snr.py --configs 0,1,2,3,4,5 1,2,3,4 --branches 6 --prompts 24
    python bench/gradient_snr.py --configs 2 --noise-blocks 1 4   # isotropic vs 4x4 block-constant branch noise
    python bench/gradient_snr.py --configs 2 --antithetic 0 1     # independent vs mirrored (eps, -eps) branches

For each branch-step set K: several independent rollout batches on the SAME prompts (new noise each), each scored by
the GenEval partial-credit reward (shapes detector, in process), advantages and the TempFlow-GRPO loss as the trainer
computes them (clipped surrogate with the noise-aware weights, no KL), one backward over the whole batch; the LoRA
gradients of every pair of batches are compared by cosine. Two batches' gradients agree only through the signal
they share, so E[cos] ~ |signal|^2 / (|signal|^2 + |noise|^2) at that batch size. The same is done with the rewards
shuffled within each batch (no signal by construction): its cosine is the floor the real one must rise above.

Printed per K, branch-noise block size b (trainer.sampling.noise_subspace) and antithetic flag (mirrored branch
pairs, trainer.algorithms.branching): mean cosine over batch pairs, real
vs shuffled, their difference, and the images per batch. At the fresh LoRA (B = 0) only the B matrices receive
gradients, as at the first step of a run.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.geneval.scorer import REWARDS as GENEVAL_REWARDS  # noqa: E402
from trainer.advantages import local_gather  # noqa: E402
from trainer.algorithms.tempflow import TempFlowConfig, TempFlowGRPO  # noqa: E402
from trainer.models.shapes import ShapesConfig, ShapesFlowModel  # noqa: E402
from trainer.shapes_world.evaluate import shapes_geneval_values  # noqa: E402
from trainer.shapes_world.prompts import TRAIN_FILE, read_jsonl  # noqa: E402


def batch_gradient(model: ShapesFlowModel, algo: TempFlowGRPO, entries: list[dict], reward: str, seed: int,
                   shuffle: bool) -> torch.Tensor:
    """The flattened LoRA gradient of one rollout batch's TempFlow-GRPO loss (rewards shuffled when asked)."""
    generator = torch.Generator().manual_seed(seed)
    rollout = algo.rollout(model, [e["prompt"] for e in entries], entries, generator)
    rewards = torch.tensor(shapes_geneval_values(rollout.query.images.numpy(), rollout.query.metadata, reward))
    if shuffle:
        rewards = rewards[torch.randperm(len(rewards), generator=generator)]
    batch = algo.prepare_training(rollout, rewards, local_gather)
    units = list(algo.training_units(batch, generator))
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    for unit in units:
        loss, _ = algo.loss(model, unit)
        (loss / len(units)).backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).clone()


def mean_pair_cosine(gradients: list[torch.Tensor]) -> float:
    """Mean cosine over all pairs; NaN when a batch had no reward variance at all (zero gradient)."""
    pairs = list(itertools.combinations(gradients, 2))
    if any(float(g.norm()) == 0.0 for g in gradients):
        return float("nan")
    return sum(float(a @ b / (a.norm() * b.norm())) for a, b in pairs) / len(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["0", "1", "2", "4"],
                        help="branch-step sets K to compare, each comma-separated (e.g. 0,1,2,3,4,5)")
    parser.add_argument("--branches", type=int, default=12, help="B branches per (seed, branch step)")
    parser.add_argument("--prompts", type=int, default=48, help="training prompts per batch (one seed each)")
    parser.add_argument("--batches", type=int, default=3, help="independent batches per K and reward kind")
    parser.add_argument("--reward", default="partial", choices=GENEVAL_REWARDS,
                        help="GenEval value the advantages are computed from")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale (the demo's)")
    parser.add_argument("--shift", type=float, default=1.0, help="SD3 time shift (the demo's)")
    parser.add_argument("--noise-blocks", type=int, nargs="+", default=[1],
                        help="branch-noise block sizes b to compare (1 = the paper's isotropic noise)")
    parser.add_argument("--antithetic", type=int, nargs="+", default=[0], choices=[0, 1],
                        help="1 = branches in mirrored noise pairs (eps, -eps); 0 = independent (the papers')")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ShapesFlowModel(None, ShapesConfig(device="cpu", lora_rank=16, lora_alpha=32, lora_init_seed=0))
    entries = read_jsonl(TRAIN_FILE)
    entries = [entries[i] for i in torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))
               [:args.prompts].tolist()]
    print(f"{'K':<14}{'b':>3}{'anti':>5}{'images':>8}{'cos real':>10}{'cos shuffled':>14}{'difference':>12}",
          flush=True)
    for spec, block, antithetic in itertools.product(args.configs, args.noise_blocks, args.antithetic):
        steps = tuple(int(k) for k in spec.split(","))
        algo = TempFlowGRPO(TempFlowConfig(num_steps=10, shift=args.shift, guidance_scale=args.guidance,
                                           seeds_per_prompt=1, num_branches=args.branches, branch_steps=steps,
                                           train_batch_size=4, clip_range=1e-3, beta=0.0, noise_block=block,
                                           antithetic_branches=bool(antithetic)))
        real = [batch_gradient(model, algo, entries, args.reward, 100 + i, False) for i in range(args.batches)]
        null = [batch_gradient(model, algo, entries, args.reward, 200 + i, True) for i in range(args.batches)]
        cos_real, cos_null = mean_pair_cosine(real), mean_pair_cosine(null)
        images = args.prompts * args.branches * len(steps)
        print(f"{spec:<14}{block:>3}{antithetic:>5}{images:>8}{cos_real:>10.4f}{cos_null:>14.4f}"
              f"{cos_real - cos_null:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
