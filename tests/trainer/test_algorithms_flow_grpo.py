"""Flow-GRPO and Flow-GRPO (Fixed) on the toy flow model: invariant 3, the rollout plan, cost and grouping."""
import pytest
import torch

from tests.support.toy_flow_model import ToyFlowModel, toy_reward
from trainer.advantages import local_gather
from trainer.algorithms.registry import build_algorithm
from trainer.sampling.sde_step import sde_step_with_logprob

torch.set_num_threads(1)
PROMPTS = ["a red cube", "two blue balls"]


def _run(name="flow_grpo", **overrides):
    config = dict(num_steps=4, group_size=3, guidance_scale=3.0, train_batch_size=2, beta=0.04)
    config.update(overrides)
    algo = build_algorithm(name, config)
    model = ToyFlowModel()
    gen = torch.Generator().manual_seed(0)
    rollout = algo.rollout(model, PROMPTS, [None, {"tag": "counting"}], gen)
    batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
    return algo, model, rollout, batch, gen


def test_every_sampling_step_is_an_sde_step_whose_stored_log_prob_rescoring_reproduces():
    algo, model, rollout, batch, gen = _run()
    x, x_next = rollout.latents[:, 1], rollout.latents[:, 2]
    cond = rollout.prompt_cond.index(rollout.prompt_index)
    with torch.no_grad():
        v = model.velocity(x, algo.sigmas[1].expand(len(x)), cond, 3.0)
    step = sde_step_with_logprob(x, v, algo.sigmas[1], algo.sigmas[2], algo.sigmas[1], 0.7, next_x=x_next)
    assert torch.allclose(step.log_prob, rollout.log_probs[:, 1], atol=1e-5)
    assert not torch.allclose(x_next, step.mean)  # noise was injected


def test_invariant3_first_minibatch_has_unit_ratio_and_loss_minus_mean_advantage():
    algo, model, rollout, batch, gen = _run()
    unit = next(iter(algo.training_units(batch, gen)))
    loss, metrics = algo.loss(model, unit)
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-5 and metrics["clip_fraction"] == 0.0
    assert abs(metrics["kl"]) < 1e-12  # the adapter is still zero: policy == reference
    assert abs(float(loss.detach()) - float(-unit.advantages.clamp(-5, 5).mean())) < 1e-5


def test_trained_steps_follow_timestep_fraction_and_every_kept_row_is_trained_once_per_step():
    algo, model, rollout, batch, gen = _run(num_steps=4, timestep_fraction=0.99)
    assert algo.trained_steps == 3 and rollout.log_probs.shape == (6, 3)
    seen = []
    for unit in algo.training_units(batch, gen):
        seen += list(zip(unit.old_log_prob.tolist(), unit.step.tolist()))
    assert len(seen) == 6 * 3 and len(set(seen)) == 18


def test_cost_counts_cfg_as_two_and_reference_forwards_only_with_beta():
    for beta, ref in ((0.04, True), (0.0, False)):
        algo, model, rollout, batch, gen = _run(beta=beta)
        assert algo.cost.sampling_nfe == 6 * 4 * 2 == model.nfe()
        for unit in algo.training_units(batch, gen):
            loss, _ = algo.loss(model, unit)
            loss.backward()
        assert algo.cost.training_nfe == 6 * 3 * 2
        assert algo.cost.reference_nfe == (6 * 3 * 2 if ref else 0)
        assert algo.cost.reward_images == 6 and algo.cost.trained_samples == 6


def test_reward_query_carries_prompts_metadata_groups_and_branch_ids():
    algo, model, rollout, batch, gen = _run()
    query = rollout.query
    assert query.images.shape == (6, 4, 4, 3) and query.images.dtype == torch.uint8
    assert query.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert query.metadata[3] == {"tag": "counting"}
    assert query.branch[4] == {"group_id": 1, "seed": 1, "branch_step": -1, "sample_id": 1}
    assert len(set(query.group[:3].tolist())) == 1 and query.group[0] != query.group[3]


def test_fixed_uses_per_group_std_and_original_the_batch_std():
    _, _, _, original, _ = _run("flow_grpo")
    _, _, _, fixed, _ = _run("flow_grpo_fixed")
    for rows in (slice(0, 3), slice(3, 6)):
        assert abs(float(fixed.advantages[rows, 0].std(correction=0)) - 1) < 1e-2
    assert not torch.allclose(original.advantages, fixed.advantages)


def test_same_latent_gives_every_sample_of_a_prompt_the_same_initial_noise():
    algo, _, rollout, _, _ = _run(same_latent=True)
    assert torch.equal(rollout.latents[0, 0], rollout.latents[2, 0])
    assert not torch.equal(rollout.latents[0, 0], rollout.latents[3, 0])


def test_a_training_step_changes_the_adapter_and_the_ratio_moves():
    algo, model, rollout, batch, gen = _run(clip_range=0.2)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    units = list(algo.training_units(batch, gen))
    loss, _ = algo.loss(model, units[0])
    loss.backward()
    optimizer.step()
    assert float(model.lora_b.detach().abs().sum()) > 0
    _, metrics = algo.loss(model, units[1])
    assert metrics["ratio_mean"] != 1.0 and metrics["kl"] > 0


def test_cps_option_samples_and_trains():
    algo, model, rollout, batch, gen = _run(sde_type="cps", noise_level=0.8)
    loss, metrics = algo.loss(model, next(iter(algo.training_units(batch, gen))))
    assert torch.isfinite(loss) and abs(metrics["ratio_mean"] - 1) < 1e-5


def test_registry_rejects_unknown_names_and_fields():
    with pytest.raises(ValueError):
        build_algorithm("dpo")
    with pytest.raises(ValueError):
        build_algorithm("flow_grpo", {"group_sise": 3})


def test_kl_mode_flowgrpo_code_is_dt_times_the_exact_kl_in_the_loss():
    units = {}
    for mode in ("exact", "flowgrpo_code"):
        algo, model, rollout, batch, gen = _run(kl_mode=mode, train_batch_size=1)
        model.perturb_adapter()
        units[mode] = [(u, algo.loss(model, u)[1]["kl"]) for u in algo.training_units(batch, gen)]
    for (unit, exact), (_, code) in zip(units["exact"], units["flowgrpo_code"]):
        dt = float(unit.sigma - unit.sigma_next)
        assert abs(code - dt * exact) <= 1e-4 * exact


def test_block_noise_option_rescores_its_transitions_and_starts_training_at_unit_ratio():
    algo, model, rollout, batch, gen = _run(noise_block=2)
    x, x_next = rollout.latents[:, 1], rollout.latents[:, 2]
    cond = rollout.prompt_cond.index(rollout.prompt_index)
    with torch.no_grad():
        v = model.velocity(x, algo.sigmas[1].expand(len(x)), cond, 3.0)
    step = sde_step_with_logprob(x, v, algo.sigmas[1], algo.sigmas[2], algo.sigmas[1], 0.7, next_x=x_next,
                                 noise_block=2)
    assert torch.allclose(step.log_prob, rollout.log_probs[:, 1], atol=1e-5)
    _, metrics = algo.loss(model, next(iter(algo.training_units(batch, gen))))
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-5 and abs(metrics["kl"]) < 1e-12


def test_block_noise_is_refused_for_the_cps_step():
    with pytest.raises(ValueError, match="noise_block"):
        build_algorithm("flow_grpo", {"sde_type": "cps", "noise_block": 2})
