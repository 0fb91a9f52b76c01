"""TempFlow-GRPO and Pave-GRPO end to end: a real reward service process and a real `python -m trainer --algo ...`
process on the tiny SD3, one optimizer step each. The run must finish, log finite losses, the per-step reward
matrix and the algorithm's cost, and the reward service must have scored every branch image."""
from __future__ import annotations

import json
import math

import pytest

from tests.trainer.test_e2e_harness import (brightness_service, prompt_file, read_metrics, run_trainer,
                                            tiny_sd3_dir, trainer_flags)

pytestmark = pytest.mark.slow

__all__ = ["prompt_file", "tiny_sd3_dir"]  # fixtures used here

RUNS = {
    # 2 prompt groups x 1 seed x K={0,2} x B=4 branches = 16 images
    "tempflow": ({"seeds_per_prompt": 1, "branch_steps": [0, 2], "kl_mode": "exact"}, 16, [0, 2]),
    # 2 prompt groups x (1 anchor + K={0,2} x G=4 branches) = 18 images
    "pave": ({"branch_steps": [0, 2]}, 18, [0, 2]),
}


@pytest.mark.parametrize("algo", list(RUNS))
def test_branched_algorithm_trains_against_a_reward_service(algo, tiny_sd3_dir, prompt_file, tmp_path):
    options, images, steps = RUNS[algo]
    with brightness_service(tmp_path) as service:
        flags = trainer_flags(tiny_sd3_dir, prompt_file, tmp_path / "run", steps=1, algo=algo, resolution=32,
                              reward_url=f"name=brightness,url={service.url}", algo_options=json.dumps(options))
        run_trainer(flags, tmp_path / "trainer.log")
    step_records = read_metrics(tmp_path / "run", "step")
    assert [r["step"] for r in step_records] == [1]
    assert math.isfinite(step_records[0]["loss"]) and step_records[0]["grad_norm"] > 0
    epoch = read_metrics(tmp_path / "run", "epoch")[0]
    assert epoch["cost"]["reward_images"] == images and epoch["cost"]["training_nfe"] > 0
    for k in steps:
        assert math.isfinite(epoch[f"reward_by_step/k{k}_mean"]) and f"reward_by_step/k{k}_std" in epoch
