"""Flow-GRPO, Flow-GRPO (Fixed), TempFlow-GRPO and Pave-GRPO on the shapes world at an equal budget of model
evaluations, several seeds each: final held-out GenEval accuracy, NFE to reach a held-out reward, reward curves.

    python bench/algorithms.py --seeds 0 1 2 --nfe-budget 60000 --jobs 2 --out runs/bench-algorithms

One GenEval service (shapes detector, partial-credit reward) serves every run over HTTP. Each run is a real
`python -m trainer` process on the shipped base model with the same LoRA, optimiser and sampler settings
(COMMON_FLAGS) and its algorithm's rollout plan (ALGORITHM_FLAGS, scaled down from the papers' to the shapes world),
stopped by `--nfe-budget` (sampling + training + reference forwards, CFG counting 2) after the epoch that reaches it.
After every epoch the trainer evaluates the held-out prompts with the deterministic sampler and logs their mean
partial-credit reward; that curve (against NFE) gives "NFE to reach --threshold". At the end each run's LoRA is
scored with GenEval's strict rules on `--eval-samples` images per held-out prompt from the noise of its seed (1000 +
seed), and so is the base model for every seed: a run's gain is its score minus the base's on the same noise (with 4
samples per prompt the noise alone moves the shipped base's overall score from 0.36 to 0.53 across seeds 0-2).
Printed: a table of mean and min-max over seeds; written: results.json and two plots (held-out reward vs NFE,
rollout reward vs NFE). Runs execute `--jobs` at a time, one torch thread each. A run that finished (its
`bench_result.json` in its directory, for the same budget and evaluation) is read back instead of trained again, so
an interrupted benchmark is continued by the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.launcher import REPO_ROOT, exit_on_sigterm, running_service  # noqa: E402
from trainer.reward_curve import CurvePoint, plot_reward_curves, read_reward_curve  # noqa: E402
from trainer.shapes_world.prompts import TAGS  # noqa: E402

COMMON_FLAGS: tuple[str, ...] = (
    "--num-steps", "10", "--guidance-scale", "3.0", "--shift", "1.0", "--lr", "3e-4",
    "--lora-rank", "16", "--lora-alpha", "32", "--ema-decay", "0", "--grad-accumulation", "3",
    "--eval-interval", "1", "--eval-num-steps", "10", "--eval-guidance-scale", "3.0", "--eval-num-prompts", "42",
    "--image-interval", "0", "--checkpoint-interval", "0", "--no-tensorboard", "--no-progress-bar",
    "--steps", "1000000",
)
PPO_FLAGS = ("--clip-range", "1e-3",)  # the PPO-style algorithms (Pave's loss has no ratio clip); KL: own defaults
ALGORITHM_FLAGS: dict[str, tuple[str, ...]] = {  # images scored per epoch: 96 / 96 / 144 / 150
    "flow_grpo": ("--algo", "flow_grpo", "--group-size", "8", "--groups-per-epoch", "12", "--train-batch-size", "8",
                  *PPO_FLAGS),
    "flow_grpo_fixed": ("--algo", "flow_grpo_fixed", "--group-size", "8", "--groups-per-epoch", "12",
                        "--train-batch-size", "8", *PPO_FLAGS),
    "tempflow": ("--algo", "tempflow", "--group-size", "4", "--groups-per-epoch", "6", "--train-batch-size", "4",
                 *PPO_FLAGS, "--algo-options", json.dumps({"seeds_per_prompt": 1, "branch_steps": [0, 1, 2, 3, 4, 5]})),
    "pave": ("--algo", "pave", "--group-size", "6", "--groups-per-epoch", "6", "--train-batch-size", "2",
             "--algo-options", json.dumps({"branch_steps": [0, 2, 4, 6]})),
}


@dataclass
class RunResult:
    algo: str  # algorithm name
    seed: int  # training seed
    run_dir: str  # the trainer's output directory
    wall_s: float  # wall time of the training process, seconds
    rollout_curve: list[CurvePoint]  # rollout reward per epoch
    heldout_curve: list[CurvePoint]  # held-out (deterministic sampler) reward after each epoch
    strict: dict[str, float]  # final GenEval strict accuracy per tag + overall


RESULT_FILE = "bench_result.json"  # a finished run's RunResult, written into its run directory


def save_run_result(result: RunResult, args: argparse.Namespace) -> None:
    """Write `result` with the settings it was measured under, so a later run of the benchmark can reuse it."""
    record = {"nfe_budget": args.nfe_budget, "eval_samples": args.eval_samples, "model_dir": args.model_dir,
              **asdict(result)}
    (Path(result.run_dir) / RESULT_FILE).write_text(json.dumps(record, indent=1) + "\n")


def load_run_result(run_dir: Path, args: argparse.Namespace) -> RunResult | None:
    """The finished run in `run_dir` when it was measured under the same budget, evaluation and base; else None."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if (record["nfe_budget"], record["eval_samples"], record["model_dir"]) != (
            args.nfe_budget, args.eval_samples, args.model_dir):
        return None
    return RunResult(record["algo"], record["seed"], record["run_dir"], record["wall_s"],
                     [CurvePoint(**p) for p in record["rollout_curve"]],
                     [CurvePoint(**p) for p in record["heldout_curve"]], record["strict"])


def train_one(algo: str, seed: int, args: argparse.Namespace, reward_url: str) -> RunResult:
    from trainer.shapes_world.evaluate import evaluate_checkpoint

    run_dir = Path(args.out) / f"{algo}-seed{seed}"
    finished = load_run_result(run_dir, args)
    if finished is not None:
        print(f"[bench] {algo} seed {seed}: finished earlier, read from {run_dir / RESULT_FILE}", flush=True)
        return finished
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt: its metrics.jsonl would be appended to
    command = [sys.executable, "-m", "trainer", "--reward-url", f"name=geneval,url={reward_url}",
               "--seed", str(seed), "--output-dir", str(run_dir), "--nfe-budget", str(args.nfe_budget),
               *(["--model-path", args.model_dir] if args.model_dir else []),
               *COMMON_FLAGS, *ALGORITHM_FLAGS[algo]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    started = time.monotonic()
    with open(Path(args.out) / f"{algo}-seed{seed}.log", "w") as log:
        subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.monotonic() - started
    rollout = read_reward_curve(run_dir / "metrics.jsonl")
    heldout = read_reward_curve(run_dir / "metrics.jsonl", kind="eval")
    strict, _, _ = evaluate_checkpoint(final_eval_config(args, seed, str(run_dir / "lora")))
    print(f"[bench] {algo} seed {seed}: {len(rollout)} epochs, {rollout[-1].nfe} NFE, {wall:.0f} s, "
          f"strict overall {strict['overall']:.3f}", flush=True)
    result = RunResult(algo, seed, str(run_dir), wall, rollout, heldout, strict)
    save_run_result(result, args)
    return result


def nfe_to_reach(curve: list[CurvePoint], threshold: float) -> int | None:
    return next((p.nfe for p in curve if p.reward >= threshold), None)


def spread(values: list[float], signed: bool = False) -> str:
    """Mean [min, max] of `values`, three decimals (with a sign when `signed`)."""
    f = "+.3f" if signed else ".3f"
    return f"{np.mean(values):{f}} [{min(values):{f}}, {max(values):{f}}]"


def final_eval_config(args: argparse.Namespace, seed: int, lora_dir: str = ""):
    """The final strict evaluation of training seed `seed` (base model + `lora_dir`; the base alone when empty): the
    rollouts' sampler (10 steps, guidance 3, no time shift) on the noise of seed 1000 + seed."""
    from trainer.shapes_world.evaluate import EvalConfig

    return EvalConfig(model_dir=args.model_dir, lora_dir=lora_dir, samples=args.eval_samples, steps=10, guidance=3.0,
                      shift=1.0, seed=1000 + seed)


def table(results: list[RunResult], threshold: float, base_by_seed: dict[int, dict[str, float]]) -> str:
    bases = list(base_by_seed.values())
    lines = [f"| algorithm | runs | epochs | NFE spent | held-out strict overall | gain over base, same noise | single "
             f"| two | counting | colors | position | color_attr | last held-out reward "
             f"| NFE to held-out reward >= {threshold} (reached) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| base model | {len(bases)} | - | 0 | {spread([b['overall'] for b in bases])} | - | " + " | ".join(
                 f"{np.mean([b[t] for b in bases]):.3f}" for t in TAGS) + " | - | - |"]
    for algo in ALGORITHM_FLAGS:
        runs = [r for r in results if r.algo == algo]
        if not runs:
            continue
        reached = [nfe_to_reach(r.heldout_curve, threshold) for r in runs]
        hit = [n for n in reached if n is not None]
        reach = f"{np.mean(hit):.0f} ({len(hit)}/{len(runs)})" if hit else f"- (0/{len(runs)})"
        tags = " | ".join(f"{np.mean([r.strict[t] for r in runs]):.3f}" for t in TAGS)
        gains = [r.strict["overall"] - base_by_seed[r.seed]["overall"] for r in runs]
        lines.append(f"| {algo} | {len(runs)} | {np.mean([len(r.rollout_curve) for r in runs]):.1f} | "
                     f"{np.mean([r.rollout_curve[-1].nfe for r in runs]):.0f} | "
                     f"{spread([r.strict['overall'] for r in runs])} | {spread(gains, signed=True)} | {tags} | "
                     f"{spread([r.heldout_curve[-1].reward for r in runs if r.heldout_curve] or [float('nan')])} | "
                     f"{reach} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHM_FLAGS), choices=list(ALGORITHM_FLAGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds per algorithm")
    parser.add_argument("--model-dir", default="", help="base checkpoint; empty = the shipped one")
    parser.add_argument("--nfe-budget", type=int, default=60000, help="model evaluations per run (count)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="held-out partial-credit reward whose first crossing is reported (NFE); the shipped "
                             "base is at ~0.43")
    parser.add_argument("--eval-samples", type=int, default=4, help="images per held-out prompt, final strict eval")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default="runs/bench-algorithms", help="output directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from trainer.shapes_world.evaluate import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    base_by_seed = {}
    for seed in args.seeds:
        base_by_seed[seed], _, _ = evaluate_checkpoint(final_eval_config(args, seed))
        print(f"[bench] base model strict, noise of seed {seed}: "
              f"{json.dumps({k: round(v, 3) for k, v in base_by_seed[seed].items()})}", flush=True)
    jobs = [(algo, seed) for seed in args.seeds for algo in args.algos]
    with running_service("services.geneval", "--detector", "shapes", "--max-batch-items", "64",
                         log_dir=out) as service:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: train_one(job[0], job[1], args, service.url), jobs))
    text = table(results, args.threshold, base_by_seed)
    print(text, flush=True)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "nfe_budget": args.nfe_budget, "threshold": args.threshold,
        "base_strict_by_seed": base_by_seed,
        "runs": [asdict(r) for r in results]}, indent=1) + "\n")
    for name, attr, ylabel in (("heldout_reward_vs_nfe.png", "heldout_curve", "held-out partial-credit reward"),
                               ("rollout_reward_vs_nfe.png", "rollout_curve", "rollout partial-credit reward")):
        curves = {algo: [getattr(r, attr) for r in results if r.algo == algo] for algo in args.algos}
        plot_reward_curves(curves, out / name, x="nfe", ylabel=ylabel,
                           title=f"shapes world, {len(args.seeds)} seeds, budget {args.nfe_budget} NFE")
    print(f"[bench] wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'heldout_reward_vs_nfe.png'}")


if __name__ == "__main__":
    main()
