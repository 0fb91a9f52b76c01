"""Data parallelism: 2 torchrun processes (gloo, CPU) against 1 process with the same global batch give the same
advantages and, after one optimizer step, the same LoRA weights.

The file is also the worker torchrun launches (`python -m torch.distributed.run ... test_distributed.py ARGS`): it
builds the trainer exactly as `python -m trainer` does, runs one epoch (= one optimizer step), and writes the
gathered rewards/advantages and each rank's LoRA weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def worker(argv: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    from trainer.__main__ import build_algorithm, build_model, build_reward_client, load_prompts
    from trainer.config import config_from_args
    from trainer.distributed import init_distributed, shutdown
    from trainer.loop import Trainer

    out_dir = Path(argv[0])
    config, _ = config_from_args(argv[1:])
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    model = build_model(config, ctx)
    train_prompts, _ = load_prompts(config, model)
    client = build_reward_client(config, seed=ctx.rank)
    try:
        trainer = Trainer(config, model, build_algorithm(config), client, train_prompts, ctx=ctx)
        metrics = trainer.train_epoch()
        advantages = trainer.gather(trainer.last_batch.advantages.contiguous())
        tensors = {f"lora/{k}": v.detach().cpu().contiguous() for k, v in model.lora_state_dict().items()}
        if ctx.is_main:
            tensors["advantages"] = advantages.cpu().contiguous()
            (out_dir / "metrics.json").write_text(json.dumps({"steps": metrics["optimizer_steps"],
                                                              "rewards": metrics["reward/global_mixed_mean"]}))
        save_file(tensors, str(out_dir / f"rank{ctx.rank}.safetensors"))
    finally:
        client.close()
        shutdown(ctx)


if __name__ == "__main__":
    worker(sys.argv[1:])
    sys.exit(0)


from tests.support.service_process import free_port  # noqa: E402
from tests.trainer.test_e2e_harness import (CHILD_ENV, brightness_service, prompt_file, tiny_sd3_dir,  # noqa: E402
                                            trainer_flags)

pytestmark = pytest.mark.slow

__all__ = ["prompt_file", "tiny_sd3_dir"]  # fixtures used here


def launch(processes: int, out_dir: Path, flags: list[str]) -> None:
    out_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__, str(out_dir), *flags]
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tiny_sd3_dir, prompt_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    with brightness_service(tmp_path) as service:
        flags = trainer_flags(tiny_sd3_dir, prompt_file, tmp_path / "unused", steps=1,
                              reward_url=f"name=bright,url={service.url}", groups_per_epoch=4)
        launch(1, tmp_path / "single", flags)
        launch(2, tmp_path / "ddp", flags)

    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    ddp_rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    assert json.loads((tmp_path / "single" / "metrics.json").read_text())["steps"] == 1
    assert single["advantages"].shape == ddp["advantages"].shape == (16, 3)
    assert single["advantages"].abs().max() > 0
    torch.testing.assert_close(ddp["advantages"], single["advantages"], rtol=1e-5, atol=1e-6)
    lora_keys = [k for k in single if k.startswith("lora/")]
    assert lora_keys
    # a fresh LoRA has B = 0, so non-zero B matrices show the optimizer step really moved the weights
    assert any(single[k].abs().max() > 0 for k in lora_keys if "lora_B" in k)
    for key in lora_keys:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-7)
        assert torch.equal(ddp[key], ddp_rank1[key]), "the ranks' weights diverged"
