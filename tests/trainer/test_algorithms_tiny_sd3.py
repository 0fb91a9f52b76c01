"""Each algorithm end to end on the real tiny SD3 (built from config, saved, loaded by SD3FlowModel): rollout ->
in-process analytic reward -> advantages -> training units -> loss -> one optimizer step on the LoRA. The start of
the update is checked against the section 6 invariants (ratio 1 / Pave loss 0), and the LoRA must move."""
from __future__ import annotations

import pytest
import torch

from tests.support.toy_flow_model import toy_reward
from trainer.advantages import local_gather
from trainer.algorithms.registry import build_algorithm
from trainer.models.sd3 import SD3Config, SD3FlowModel
from trainer.models.tiny_sd3 import build_tiny_sd3

torch.set_num_threads(2)
PROMPTS = ["a red cube", "two blue balls"]
CONFIGS = {
    "flow_grpo": dict(num_steps=3, group_size=2, guidance_scale=2.0, train_batch_size=2, beta=0.04),
    "flow_grpo_fixed": dict(num_steps=3, group_size=2, guidance_scale=1.0, train_batch_size=4, beta=0.0),
    "tempflow": dict(num_steps=3, seeds_per_prompt=1, num_branches=2, guidance_scale=2.0, train_batch_size=4),
    "pave": dict(num_steps=4, num_branches=2, branch_steps=(0, 2), train_batch_size=2),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))
    return SD3FlowModel(str(directory), SD3Config(resolution=16, max_sequence_length=8, lora_rank=4,
                                                  lora_alpha=8.0, device="cpu"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_update_on_tiny_sd3(model, name):
    algo = build_algorithm(name, CONFIGS[name])
    before = {k: v.clone() for k, v in model.lora_state_dict().items()}
    rollout = algo.rollout(model, PROMPTS, [None, None], torch.Generator().manual_seed(0))
    assert rollout.query.images.dtype == torch.uint8 and len(rollout.query.branch) == len(rollout.query.images)
    rewards = toy_reward(rollout.query.images) + 0.01 * torch.arange(len(rollout.query.images)).float()
    batch = algo.prepare_training(rollout, rewards, local_gather)
    units = list(algo.training_units(batch, torch.Generator().manual_seed(1)))
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-2)
    loss, metrics = algo.loss(model, units[0])
    if name == "pave":
        assert abs(float(loss.detach())) < 1e-5
    else:
        assert abs(metrics["ratio_mean"] - 1.0) < 1e-3
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after = model.lora_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert algo.cost.training_nfe > 0 and algo.cost.sampling_nfe > 0
    model.load_lora_state_dict(before)
