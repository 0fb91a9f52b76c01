"""`python -m trainer`: GRPO training of a flow model's LoRA against reward services (see trainer.loop).

    python -m trainer --reward-url http://127.0.0.1:8000 --prompt-file prompts.jsonl --steps 100
    torchrun --nproc-per-node 2 -m trainer --config run.yaml          # data parallel (gloo on CPU, nccl on GPU)
    python -m trainer --config run.yaml --resume                       # continue from the newest valid checkpoint
    python -m trainer --help                                           # every setting, grouped, with units

This module only turns the config into objects (model adapter, algorithm, reward client, prompts) and hands them
to `trainer.loop.Trainer`.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from typing import Any

import torch
import yaml

from trainer.config import TrainerConfig, config_from_args
from trainer.distributed import DistContext, init_distributed, shutdown
from trainer.prompt_data import PromptRecord, read_prompt_file

# model kind -> (module, config dataclass) of the adapter's typed settings
MODEL_CONFIG_CLASSES = {"sd3": ("trainer.models.sd3", "SD3Config"),
                        "shapes": ("trainer.models.shapes", "ShapesConfig")}

# AlgorithmConfig field -> the algorithm config's field name (where they differ)
ALGORITHM_FIELD_NAMES = {"kl_beta": "beta"}


def resolve_device(name: str, ctx: DistContext) -> str:
    if name == "auto":
        return f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    return name


def model_settings(config: TrainerConfig, ctx: DistContext) -> Any:
    """The adapter's typed config built from the model section (fields the adapter does not have are dropped)."""
    m = config.model
    values = {"lora_rank": m.lora_rank, "lora_alpha": m.lora_alpha, "device": resolve_device(m.device, ctx),
              "lora_init_seed": config.optim.seed, **m.model_options}
    if m.resolution is not None:
        values["resolution"] = m.resolution
    module_name, class_name = MODEL_CONFIG_CLASSES.get(m.model_kind, (None, None))
    if module_name is None:
        return values
    settings_cls = getattr(importlib.import_module(module_name), class_name)
    known = {f.name for f in dataclasses.fields(settings_cls)}
    unknown = set(m.model_options) - known
    if unknown:
        raise ValueError(f"--model-options keys {sorted(unknown)} are not settings of the {m.model_kind} adapter "
                         f"({sorted(known)})")
    return settings_cls(**{k: v for k, v in values.items() if k in known})


def build_model(config: TrainerConfig, ctx: DistContext):
    from trainer.models.registry import load_model

    torch.manual_seed(config.optim.seed)  # any init the adapter draws from the global RNG is the same on every rank
    return load_model(config.model.model_kind, config.model.model_path, model_settings(config, ctx))


def algorithm_options(config: TrainerConfig) -> dict[str, Any]:
    """Algorithm knobs that were set (None = the algorithm's default), plus --algo-options."""
    skip = {"algo", "algo_options", "eval_num_steps", "eval_guidance_scale"}
    options = {}
    for f in dataclasses.fields(config.algorithm):
        value = getattr(config.algorithm, f.name)
        if f.name not in skip and value is not None:
            options[ALGORITHM_FIELD_NAMES.get(f.name, f.name)] = value
    options.update(config.algorithm.algo_options)
    return options


def build_algorithm(config: TrainerConfig):
    from trainer.algorithms.registry import build_algorithm as build

    return build(config.algorithm.algo, algorithm_options(config))


def build_reward_client(config: TrainerConfig, seed: int):
    from trainer.rewards.reward_set import RewardSet
    from trainer.rewards.scoring_pool import RewardClient

    r = config.rewards
    if r.reward_config and r.reward_url:
        raise ValueError("give either --reward-config FILE or --reward-url flags, not both")
    reward_set = RewardSet.from_file(r.reward_config) if r.reward_config else RewardSet.from_flags(list(r.reward_url))
    return RewardClient(reward_set, seed=seed)


# model kind -> (module, train file attribute, held-out file attribute) of its built-in prompt sets
BUILTIN_PROMPTS = {"shapes": ("trainer.shapes_world.prompts", "TRAIN_FILE", "HELDOUT_FILE")}


def load_prompts(config: TrainerConfig, model: Any = None) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Training and held-out prompts: the files given, else the model's built-in prompt sets (if it has them)."""
    d = config.data
    builtin = BUILTIN_PROMPTS.get(config.model.model_kind)
    train_file, held_out_file = d.prompt_file, d.eval_prompt_file
    if builtin is not None:
        module = importlib.import_module(builtin[0])
        train_file = train_file or getattr(module, builtin[1])
        held_out_file = held_out_file or getattr(module, builtin[2])
    if train_file is None:
        raise ValueError(f"--prompt-file is required: the {config.model.model_kind} model has no built-in prompts")
    return read_prompt_file(train_file), (read_prompt_file(held_out_file) if held_out_file else [])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the progress bar
    config, args = config_from_args(argv)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    device_kind = "cuda" if resolve_device(config.model.device, DistContext()).startswith("cuda") else "cpu"
    ctx = init_distributed(device_kind)
    try:
        config.validate(ctx.world_size)
        from trainer.loop import Trainer

        model = build_model(config, ctx)
        algorithm = build_algorithm(config)
        train_prompts, eval_prompts = load_prompts(config, model)
        client = build_reward_client(config, seed=config.optim.seed + ctx.rank)
        try:
            trainer = Trainer(config, model, algorithm, client, train_prompts, eval_prompts, ctx=ctx,
                              groups_per_rollout=config.data.groups_per_rollout)
            summary = trainer.run()
        finally:
            client.close()
        if ctx.is_main:
            print(f"done: {summary.steps} optimizer steps in {summary.epochs} epochs; "
                  f"checkpoint {summary.last_checkpoint}; LoRA {summary.output_dir / 'lora'}", flush=True)
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
