"""The one-command demo of the shapes world: a GenEval reward service, TempFlow-GRPO training over HTTP, before/after.

    python -m trainer.shapes_world.demo                 # ~20 minutes on 2 CPU cores (21.4 measured)
    python -m trainer.shapes_world.demo --nfe-budget 5000 --eval-samples 1   # a quick smoke run

What it does, in order (everything lands in --out-dir):
1. starts `python -m services.geneval --detector shapes --reward <--reward>` (partial credit by default; `strict`
   trains on GenEval's 0/1 correctness; `strict=0.5,partial=0.5` trains on a weighted mix of the reply's components,
   one trainer reward per component) on 127.0.0.1 (a free port) as a real service process;
2. evaluates the base model on the held-out prompts (GenEval strict accuracy per tag, shapes detector, in process:
   trainer.shapes_world.evaluate) and writes `before.png` (one row per prompt);
3. trains the base model's LoRA with `python -m trainer --algo tempflow --reward-url <the service>` (a separate
   process, images sent as raw protobuf) for a fixed budget of model evaluations (`--nfe-budget`, the same work on
   any machine), evaluating the held-out prompts' reward every 2 epochs; its run directory is `run/`
   (metrics.jsonl, checkpoints, image grids, the final LoRA in run/lora);
4. loads run/lora into the base model, evaluates the same prompts from the same noise, writes `after.png`;
5. plots the rollout and held-out rewards per optimizer step from run/metrics.jsonl as `reward_curve.png`, prints
   the held-out accuracy before and after per tag, and writes everything as `summary.json`.

The evaluation sampler is the deterministic Euler ODE (trainer.shapes_world.evaluate: uniform sigma grid) with the
rollouts' step count, time shift and guidance, from the same noise, so "before" and "after" differ only by the LoRA.
The demo samples without the SD3 time shift (`--shift 1.0`): at 10 steps the trainer's default shift 3 halves the
base model's held-out accuracy (README, Results). Extra trainer flags go after `--` and override the demo's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from services.common.launcher import REPO_ROOT, exit_on_sigterm, running_service
from services.geneval.scorer import REWARDS as GENEVAL_REWARDS, SHAPED as GENEVAL_SHAPED
from trainer.dataclass_cli import add_dataclass_arguments, dataclass_from_namespace
from trainer.reward_curve import plot_reward_curves, read_reward_curve
from trainer.shapes_world.evaluate import EvalConfig, evaluate_checkpoint

# TempFlow-GRPO settings of the demo (scaled down from the paper's to fit ~15 minutes of 2 CPU cores)
DEMO_TRAINER_FLAGS: tuple[str, ...] = (
    "--algo", "tempflow",
    "--num-steps", "10",  # N sampling steps of a rollout
    "--guidance-scale", "3.0",  # CFG in rollouts and training
    "--shift", "1.0",  # no SD3 time shift: at 10 steps shift 3 halves the base model's held-out accuracy
    "--group-size", "6",  # B branches per (seed, branch step): one advantage group
    "--groups-per-epoch", "12",  # prompts per epoch (one seed each)
    "--train-batch-size", "4",  # (seed, branch step) pairs per minibatch
    "--grad-accumulation", "6",  # minibatches per optimizer step
    "--lr", "3e-4",
    "--clip-range", "1e-3",
    "--lora-rank", "16", "--lora-alpha", "32",
    "--ema-decay", "0",
    "--algo-options", json.dumps({"seeds_per_prompt": 1, "branch_steps": [0, 1, 2, 3, 4, 5]}),
    "--eval-interval", "2",  # held-out reward curve: every 2 epochs, all 42 prompts, deterministic sampler
    "--eval-num-prompts", "42",
    "--eval-num-steps", "10",
    "--image-interval", "5",
    "--checkpoint-interval", "5",
    "--no-tensorboard",
)


@dataclass
class DemoConfig:
    """What the demo runs; trainer settings beyond these come from DEMO_TRAINER_FLAGS and `trainer_flags`."""

    out_dir: str = "runs/shapes-demo"  # directory of the grids, the plot, summary.json and the training run
    model_dir: str = ""  # base checkpoint directory; empty = the shipped trainer/shapes_world/base_model
    nfe_budget: int = 160_000  # model evaluations of the TempFlow-GRPO run (sampling + training + reference)
    steps: int = 100_000  # optimizer steps at most (the NFE budget ends the run first at the defaults)
    seed: int = 0  # seeds the training run and the evaluation noise
    reward: str = "partial"  # GenEval reward: partial, strict (0/1), graded, confidence, or mix "strict=.5,partial=.5"
    eval_samples: int = 8  # images per held-out prompt in the before/after evaluations (4 moves overall by ~0.04)
    eval_steps: int = 10  # Euler steps of the evaluation sampler (the rollouts' N)
    eval_guidance: float = 3.0  # CFG scale of the evaluation sampler (the rollouts' scale)
    eval_shift: float = 1.0  # SD3 time shift of the evaluation sampler (the rollouts' --shift)
    threads: int = 2  # torch CPU threads of the evaluations (the trainer uses torch's default)
    trainer_flags: list[str] = field(default_factory=list)  # extra `python -m trainer` flags (after `--`)

    def __post_init__(self) -> None:
        self.reward_weights()  # validates

    def reward_weights(self) -> dict[str, float] | None:
        """The mix as component -> weight; None when --reward names one component (the service's value)."""
        names = " or ".join(repr(name) for name in sorted(GENEVAL_REWARDS))
        if "=" not in self.reward:
            if self.reward not in GENEVAL_REWARDS:
                raise ValueError(f"--reward must be {names} or a mix like 'strict=0.5,partial=0.5', "
                                 f"got {self.reward!r}")
            return None
        weights: dict[str, float] = {}
        for part in self.reward.split(","):
            component, _, weight = part.partition("=")
            if component not in GENEVAL_REWARDS or component in weights:
                raise ValueError(f"--reward mix {self.reward!r}: {component!r} is not {names} or is given twice")
            try:
                weights[component] = float(weight)
            except ValueError:
                raise ValueError(f"--reward mix {self.reward!r}: weight {weight!r} is not a number") from None
        if len([c for c in weights if c in GENEVAL_SHAPED]) > 1:
            raise ValueError(f"--reward mix {self.reward!r}: at most one of {GENEVAL_SHAPED} (the service adds one)")
        return weights

    def service_reward(self) -> str:
        """The GenEval service's --reward: the one component, else the mix's shaped component, else partial."""
        weights = self.reward_weights()
        if weights is None:
            return self.reward
        return next((c for c in weights if c in GENEVAL_SHAPED), "partial")


def heldout_accuracy(lora_dir: str, config: DemoConfig, grid: Path) -> dict[str, float]:
    """GenEval strict accuracy per tag on the held-out prompts of the base model (+ a LoRA); writes the grid."""
    summary, _, _ = evaluate_checkpoint(EvalConfig(
        model_dir=config.model_dir, lora_dir=lora_dir, samples=config.eval_samples, steps=config.eval_steps,
        guidance=config.eval_guidance, shift=config.eval_shift, seed=config.seed, grid=str(grid)))
    return summary


def trainer_command(config: DemoConfig, reward_url: str, run_dir: Path) -> list[str]:
    """`python -m trainer ...` for the demo run (the demo's flags, then the user's overrides)."""
    weights = config.reward_weights()
    rewards = ([f"name=geneval,url={reward_url}"] if weights is None else
               [f"name=geneval-{c},url={reward_url},component={c},weight={w}" for c, w in weights.items()])
    return [sys.executable, "-m", "trainer", *(flag for spec in rewards for flag in ("--reward-url", spec)),
            "--steps", str(config.steps), "--nfe-budget", str(config.nfe_budget), "--seed", str(config.seed),
            "--output-dir", str(run_dir),
            *(["--model-path", config.model_dir] if config.model_dir else []),
            *DEMO_TRAINER_FLAGS, *config.trainer_flags]


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"{'tag':<14}{'before':>8}{'after':>8}{'change':>8}"]
    for tag in before:
        lines.append(f"{tag:<14}{before[tag]:>8.3f}{after[tag]:>8.3f}{after[tag] - before[tag]:>+8.3f}")
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> dict:
    out = Path(config.out_dir).resolve()
    run_dir = out / "run"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} holds an earlier run; choose another --out-dir or remove it")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    print(f"[demo] held-out GenEval accuracy of the base model ({config.eval_samples} samples per prompt) ...",
          flush=True)
    before = heldout_accuracy("", config, out / "before.png")
    print(f"[demo] before: {json.dumps({k: round(v, 3) for k, v in before.items()})}", flush=True)
    with running_service("services.geneval", "--detector", "shapes", "--reward", config.service_reward(),
                         log_dir=out) as service:
        print(f"[demo] GenEval reward service (shapes detector) ready at {service.url}; log {service.log_path}",
              flush=True)
        command = trainer_command(config, service.url, run_dir)
        print("[demo] " + " ".join(command), flush=True)
        train_started = time.monotonic()
        subprocess.run(command, cwd=REPO_ROOT, check=True)
        train_s = time.monotonic() - train_started
    after = heldout_accuracy(str(run_dir / "lora"), config, out / "after.png")
    curve = read_reward_curve(run_dir / "metrics.jsonl")
    heldout_curve = read_reward_curve(run_dir / "metrics.jsonl", kind="eval")
    plot_reward_curves({"rollouts (each epoch other prompts)": [curve], "held-out prompts": [heldout_curve]},
                       out / "reward_curve.png", ylabel=f"GenEval {config.reward} reward",
                       title="shapes world: TempFlow-GRPO over HTTP")
    summary = {"heldout_strict_before": before, "heldout_strict_after": after,
               "overall_change": after["overall"] - before["overall"], "train_s": round(train_s, 1),
               "total_s": round(time.monotonic() - started, 1),
               "reward_curve": [asdict(p) for p in curve], "heldout_reward_curve": [asdict(p) for p in heldout_curve],
               "config": asdict(config),
               "trainer_command": command[1:]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[demo] held-out GenEval strict accuracy (shapes detector)\n" + format_table(before, after), flush=True)
    print(f"[demo] training {train_s / 60:.1f} min, total {summary['total_s'] / 60:.1f} min; wrote "
          f"{out / 'before.png'}, {out / 'after.png'}, {out / 'reward_curve.png'}, {out / 'summary.json'}",
          flush=True)
    return summary


def config_from_args(argv: list[str] | None = None) -> DemoConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Flags after `--` go to `python -m trainer` unchanged.")
    add_dataclass_arguments(parser, DemoConfig, skip=("trainer_flags",))
    return dataclass_from_namespace(DemoConfig, vars(parser.parse_args(argv)), trainer_flags=extra)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    run_demo(config_from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
