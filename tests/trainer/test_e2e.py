"""End to end: a real PickScore service process (tiny CLIP) and a real `python -m trainer` process (tiny SD3)."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.support.service_process import running_service
from tests.trainer.test_e2e_harness import (CHILD_ENV, prompt_file, read_metrics, run_trainer, tiny_pickscore_dir,
                                            tiny_sd3_dir, trainer_flags)
from trainer.checkpoint import checkpoint_problem, latest_valid_checkpoint

pytestmark = pytest.mark.slow

__all__ = ["prompt_file", "tiny_pickscore_dir", "tiny_sd3_dir"]  # fixtures used here


@pytest.fixture(scope="module")
def finished_run(tiny_sd3_dir, tiny_pickscore_dir, prompt_file, tmp_path_factory):
    """Two optimizer steps against the PickScore service, with evaluation on."""
    out = tmp_path_factory.mktemp("e2e-run")
    with running_service("services.pickscore", "--model", str(tiny_pickscore_dir), "--processor",
                         str(tiny_pickscore_dir), env=CHILD_ENV) as service:
        flags = trainer_flags(tiny_sd3_dir, prompt_file, out / "run", steps=2,
                              reward_url=f"name=pickscore,url={service.url}", eval_interval=1,
                              eval_prompt_file=str(prompt_file), eval_num_prompts=2, eval_num_steps=4)
        run_trainer(flags, out / "trainer.log")
    return out / "run"


def test_trainer_runs_the_planned_steps_with_finite_losses(finished_run):
    steps = read_metrics(finished_run, "step")
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in steps)


def test_epoch_records_carry_pickscore_rewards_and_service_model_info(finished_run):
    epoch = read_metrics(finished_run, "epoch")[0]
    assert math.isfinite(epoch["reward/pickscore/raw_mean"])
    assert epoch["reward/pickscore/weight"] == 1.0
    assert epoch["model_info"]["pickscore"]  # what the service reported about its model
    assert epoch["cost"]["sampling_nfe"] > 0 and epoch["cost"]["reward_images"] == 8


def test_lora_weights_change_from_their_initial_values(finished_run, tiny_sd3_dir):
    from trainer.models.sd3 import SD3Config, SD3FlowModel

    initial = SD3FlowModel(str(tiny_sd3_dir), SD3Config(lora_rank=4, lora_alpha=8, resolution=64,
                                                        lora_init_seed=7)).lora_state_dict()
    trained = load_file(str(latest_valid_checkpoint(finished_run / "checkpoints") / "lora.safetensors"))
    assert set(trained) == set(initial)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


def test_a_valid_checkpoint_and_the_image_grids_are_written(finished_run):
    checkpoint = latest_valid_checkpoint(finished_run / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-00000002"
    assert checkpoint_problem(checkpoint) is None
    assert (finished_run / "images" / "epoch-00001.png").is_file()
    assert read_metrics(finished_run, "eval") and (finished_run / "images" / "eval-step-00000002.png").is_file()
    assert any((finished_run / "tensorboard").iterdir())


def test_saved_lora_loads_into_a_diffusers_sd3_pipeline(finished_run, tiny_sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_dir))
    pipeline.load_lora_weights(str(finished_run / "lora"))
    lora_b = {k: v for k, v in pipeline.transformer.state_dict().items() if "lora_B" in k}
    assert lora_b, "no LoRA layers were attached to the transformer"
    # a fresh LoRA has B = 0; the trained one must arrive non-zero, i.e. the weights themselves were loaded
    assert any(v.abs().max() > 0 for v in lora_b.values())


def test_with_no_model_flags_the_embedded_shapes_model_trains_on_its_own_prompts(tmp_path):
    from tests.trainer.test_e2e_harness import brightness_service

    with brightness_service(tmp_path) as service:
        run_trainer(["--reward-url", service.url, "--groups-per-epoch", "2", "--group-size", "4", "--num-steps", "4",
                     "--steps", "1", "--output-dir", str(tmp_path / "run"), "--no-progress-bar"],
                    tmp_path / "trainer.log")
    start = read_metrics(tmp_path / "run", "start")[0]
    assert start["config"]["model"]["model_kind"] == "shapes" and start["config"]["model"]["model_path"] is None
    assert [r["step"] for r in read_metrics(tmp_path / "run", "step")] == [1]
    assert latest_valid_checkpoint(tmp_path / "run" / "checkpoints") is not None
