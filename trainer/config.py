"""The trainer's one typed configuration: a YAML/JSON file, overridden by command-line flags.

`TrainerConfig` has one section per concern (model, data, algorithm, rewards, optimisation, logging,
checkpointing). Every field carries its help text (meaning and unit) in its metadata; `build_parser` turns the
sections into argparse groups, so `python -m trainer --help` lists every knob with that text, grouped. Flag
names are the field names with dashes (`--groups-per-epoch`); a few short aliases exist (`--algo`, `--resume`).

Precedence: dataclass default < config file (`--config FILE`, YAML or JSON, same section/field names) < flags.
Algorithm knobs left at None mean "the algorithm's own default" (docs/algorithms.md), so the file never has to
repeat them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from trainer.dataclass_cli import field_default


def knob(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with its one-line help (meaning + unit), shown by --help."""
    if isinstance(default, (list, dict)):
        factory = (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ModelConfig:
    """Which flow model is trained and how its LoRA adapter is shaped."""

    model_kind: str = knob("shapes", "model adapter: 'shapes' (the embedded miniature SD3) or 'sd3' (diffusers SD3/3.5)")
    model_path: str | None = knob(None, "local directory or hub id of the weights; empty = the adapter's default (embedded shapes checkpoint)")
    lora_rank: int = knob(32, "LoRA rank r on the attention projections (Flow-GRPO: 32)")
    lora_alpha: float = knob(64.0, "LoRA alpha; the adapter scales by alpha / r (Flow-GRPO: 64)")
    resolution: int | None = knob(None, "image side in pixels; empty = the model's native resolution")
    device: str = knob("auto", "torch device: 'auto' (cuda:LOCAL_RANK if available, else cpu), 'cpu', 'cuda:0', ...")
    model_options: dict = knob({}, "extra adapter options passed through unchanged (JSON object)")


@dataclass
class DataConfig:
    """Where prompts come from and how many are used per epoch."""

    prompt_file: str | None = knob(None, "training prompts: .txt (one per line) or .jsonl ({'prompt':..., metadata...}); empty = the model's built-in prompts")
    eval_prompt_file: str | None = knob(None, "held-out prompts for evaluation (same formats); empty = no evaluation unless the model has built-in ones")
    balance_by: str | None = knob(None, "metadata key (e.g. 'tag') whose values are trained equally often, whatever their share of the prompt file; empty = every prompt equally often")
    groups_per_epoch: int = knob(48, "prompt groups sampled per epoch, over all ranks (Flow-GRPO: 48); must divide by the world size")
    groups_per_rollout: int = knob(1, "prompt groups sampled per rollout call; each call's images are scored while the next call samples")
    eval_num_prompts: int = knob(16, "held-out prompts evaluated each evaluation (first N of the eval file), count")


@dataclass
class AlgorithmConfig:
    """The GRPO variant and its sampling knobs (empty = the algorithm's default from docs/algorithms.md)."""

    algo: str = knob("flow_grpo", "algorithm: flow_grpo | flow_grpo_fixed | tempflow | pave")
    group_size: int | None = knob(None, "G: images per prompt group (Flow-GRPO: 24); for tempflow/pave the branches per group (B / G)")
    num_steps: int | None = knob(None, "N: sampling steps of a rollout (Flow-GRPO: 10)")
    eval_num_steps: int = knob(40, "steps of the deterministic (a=0) evaluation sampler")
    guidance_scale: float | None = knob(None, "classifier-free guidance scale during sampling and training (SD3.5: 4.5; 1 = off)")
    eval_guidance_scale: float | None = knob(None, "CFG scale of evaluation; empty = guidance_scale (or 1 when that is empty)")
    noise_level: float | None = knob(None, "a: SDE noise level of P1 (SD3.5: 0.7)")
    noise_block: int | None = knob(None, "b: side of the square latent blocks the SDE noise is constant on, in latent elements (1 = the papers' isotropic noise; trainer/sampling/noise_subspace.py)")
    shift: float = knob(3.0, "SD3 static time shift s of the sigma schedule (evaluation sampler and algorithms)")
    clip_range: float | None = knob(None, "PPO clip epsilon of P5 (Flow-GRPO: 1e-4)")
    kl_beta: float | None = knob(None, "beta: weight of the KL to the reference (adapter off) policy")
    timestep_fraction: float | None = knob(None, "fraction of the N steps that are trained (Flow-GRPO: 0.99 -> 9 of 10)")
    train_batch_size: int | None = knob(None, "rows per training unit (minibatch) of the algorithm")
    algo_options: dict = knob({}, "algorithm-specific options passed through unchanged (JSON object), e.g. {\"kl_mode\": \"exact\"}")


@dataclass
class RewardsConfig:
    """Which reward services score the rollouts and how long a step waits for them."""

    reward_url: list = knob([], "a reward service: URL, or 'name=pickscore,url=http://h:p,weight=0.5' (repeatable)")
    reward_config: str | None = knob(None, "reward config file (YAML/JSON: rewards, mixing, retry); re-read between steps (hot swap)")
    reward_wait_s: float = knob(900.0, "how long a step keeps resubmitting to a reward that is down before the run fails, seconds")


@dataclass
class OptimConfig:
    """Optimizer, schedule length and the EMA of the LoRA weights."""

    steps: int = knob(100, "optimizer steps to train in total (the run stops exactly there)")
    nfe_budget: int = knob(0, "also stop after the epoch in which the model evaluations (sampling + training + reference NFE, count) reach this; 0 = no budget")
    lr: float = knob(3e-4, "AdamW learning rate on the LoRA parameters (Flow-GRPO: 3e-4)")
    weight_decay: float = knob(1e-4, "AdamW decoupled weight decay")
    adam_beta1: float = knob(0.9, "AdamW beta1")
    adam_beta2: float = knob(0.999, "AdamW beta2")
    adam_eps: float = knob(1e-8, "AdamW epsilon")
    grad_accumulation: int = knob(1, "training units whose gradients are summed per optimizer step (per rank)")
    inner_epochs: int = knob(1, "passes over each epoch's rollouts, reshuffled each pass (Flow-GRPO/DDPO num_inner_epochs; PPO reuse), count")
    grad_clip: float = knob(1.0, "max global L2 norm of the LoRA gradient (0 = no clipping)")
    ema_decay: float = knob(0.9, "EMA decay of the LoRA weights per EMA update (0 = no EMA)")
    ema_interval: int = knob(8, "optimizer steps between EMA updates")
    seed: int = knob(42, "seed of everything: LoRA init, prompt order, rollout noise, minibatch shuffles")


@dataclass
class LoggingConfig:
    """Where results go and what is written."""

    output_dir: str = knob("runs/trainer", "run directory: metrics.jsonl, tensorboard/, images/, checkpoints/, lora/")
    tensorboard: bool = knob(True, "write TensorBoard event files under output_dir/tensorboard")
    progress_bar: bool = knob(True, "show a tqdm progress bar over optimizer steps (rank 0)")
    image_interval: int = knob(10, "epochs between sample image grids (PNG, first rollout images); 0 = never")
    eval_interval: int = knob(0, "epochs between evaluations with the deterministic sampler on held-out prompts; 0 = never")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and whether the run resumes from one."""

    checkpoint_interval: int = knob(1, "epochs between checkpoints (one is always written at the end); 0 = only at the end")
    keep_checkpoints: int = knob(3, "most recent checkpoints kept on disk; older ones are deleted")
    resume: str | None = knob(None, "'latest' (newest valid checkpoint in output_dir) or a checkpoint directory; empty = start fresh")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "algorithm": AlgorithmConfig,
    "rewards": RewardsConfig,
    "optim": OptimConfig,
    "logging": LoggingConfig,
    "checkpoint": CheckpointConfig,
}

SECTION_TITLES = {
    "model": "model",
    "data": "data",
    "algorithm": "algorithm",
    "rewards": "rewards",
    "optim": "optimisation",
    "logging": "logging",
    "checkpoint": "checkpointing",
}

# short aliases a newcomer types; they set the same field as the long flag
ALIASES = {"algo": ["--algo"], "reward_url": ["--reward-url", "--reward"], "resume": ["--resume"]}


@dataclass
class TrainerConfig:
    """Everything one training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)  # model section
    data: DataConfig = field(default_factory=DataConfig)  # data section
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # algorithm section
    rewards: RewardsConfig = field(default_factory=RewardsConfig)  # rewards section
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation section
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # logging section
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # checkpointing section

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerConfig":
        """Sections by name; unknown sections or fields are an error naming them."""
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
        built = {}
        for name, section_cls in SECTIONS.items():
            values = dict(data.get(name) or {})
            known = {f.name for f in fields(section_cls)}
            bad = set(values) - known
            if bad:
                raise ValueError(f"unknown fields in config section {name!r}: {sorted(bad)}; known: {sorted(known)}")
            built[name] = section_cls(**{k: _coerce(section_cls, k, v) for k, v in values.items()})
        return cls(**built)

    def validate(self, world_size: int = 1) -> None:
        """Cross-field checks with messages that say what to change."""
        if self.data.groups_per_epoch % world_size:
            raise ValueError(f"--groups-per-epoch {self.data.groups_per_epoch} must be divisible by the "
                             f"world size {world_size}")
        if min(self.optim.steps, self.optim.grad_accumulation, self.optim.ema_interval, self.optim.inner_epochs) < 1:
            raise ValueError("--steps, --grad-accumulation, --ema-interval and --inner-epochs must be >= 1")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ValueError("--ema-decay must be in [0, 1)")
        if not self.rewards.reward_url and not self.rewards.reward_config:
            raise ValueError("no reward: give --reward-url URL (repeatable) or --reward-config FILE")


def _field_type(section_cls: type, name: str) -> Any:
    return get_type_hints(section_cls)[name]


def _scalar_type(tp: Any) -> Any:
    """int | None -> int; list/dict stay as they are."""
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not None and args and get_origin(tp) not in (list, dict) else tp


def _coerce(section_cls: type, name: str, value: Any) -> Any:
    """A value from a file or a flag string, converted to the field's type."""
    tp = _scalar_type(_field_type(section_cls, name))
    if value is None or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: expected true/false, got {value!r}")
        return bool(value)
    if tp in (dict, list) or get_origin(tp) in (dict, list):
        if isinstance(value, str):
            value = json.loads(value)
        return value
    if isinstance(value, str) and value == "" and get_args(_field_type(section_cls, name)):
        return None  # an empty flag clears an optional field
    return tp(value)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a dict of sections."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return data


def _metavar(tp: Any) -> str:
    scalar = _scalar_type(tp)
    return {int: "N", float: "X", dict: "JSON", list: "JSON"}.get(scalar, "TEXT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description=(
            "GRPO training of a flow-matching text-to-image model (LoRA) against reward services over HTTP.\n"
            "Minimal run: python -m trainer --reward-url http://127.0.0.1:8000 --steps 10\n"
            "Settings come from the defaults, then --config FILE (YAML/JSON with the sections below), then flags."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file with sections model/data/algorithm/rewards/optim/"
                                         "logging/checkpoint; flags override it")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    for section, section_cls in SECTIONS.items():
        group = parser.add_argument_group(SECTION_TITLES[section], section_cls.__doc__)
        for f in fields(section_cls):
            flags = [f"--{f.name.replace('_', '-')}"] + [a for a in ALIASES.get(f.name, []) if a != f"--{f.name.replace('_', '-')}"]
            tp = _field_type(section_cls, f.name)
            default_text = field_default(f)
            help_text = f"{f.metadata['help']} (default: {default_text if default_text not in (None, '') else 'empty'})"
            dest = f"{section}.{f.name}"
            if f.name == "reward_url":
                group.add_argument(*flags, dest=dest, action="append", metavar="SPEC", help=help_text)
            elif f.name == "resume":
                group.add_argument(*flags, dest=dest, nargs="?", const="latest", metavar="CHECKPOINT", help=help_text)
            elif _scalar_type(tp) is bool:
                group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, help=help_text)
            else:
                group.add_argument(*flags, dest=dest, metavar=_metavar(tp), help=help_text)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainerConfig, argparse.Namespace]:
    """Parse flags (and the --config file they name) into a TrainerConfig."""
    args = build_parser().parse_args(argv)
    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    data = {k: dict(v or {}) for k, v in data.items()}
    for dest, value in vars(args).items():
        if "." not in dest or value is None:
            continue
        section, name = dest.split(".", 1)
        data.setdefault(section, {})[name] = value
    return TrainerConfig.from_dict(data), args
