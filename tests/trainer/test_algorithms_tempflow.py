"""TempFlow-GRPO on the toy flow model: invariants 7, 8 and 9 of algorithms.md section 6, its rollout plan, cost,
seed/prompt groups and the per-step reward matrix."""
import math

import pytest
import torch

from tests.support.toy_flow_model import ToyFlowModel, toy_reward
from trainer.advantages import group_advantages, local_gather
from trainer.algorithms.branching import branched_rollout
from trainer.algorithms.registry import build_algorithm
from trainer.algorithms.tempflow import noise_aware_weights
from trainer.sampling.schedule import sd3_sigmas
from trainer.sampling.noise_subspace import project_to_blocks
from trainer.sampling.sde_step import sde_step_mean, sde_step_with_logprob

torch.set_num_threads(1)
PROMPTS = ["a red cube", "two blue balls"]
SHAPE = (3, 4, 4)


def _tempflow(**overrides):
    config = dict(num_steps=5, seeds_per_prompt=2, num_branches=3, guidance_scale=3.0, train_batch_size=3,
                  beta=0.004)
    config.update(overrides)
    algo = build_algorithm("tempflow", config)
    model = ToyFlowModel()
    gen = torch.Generator().manual_seed(0)
    rollout = algo.rollout(model, PROMPTS, [None, None], gen)
    return algo, model, rollout, gen


def _branches(model, noise, noise_level=0.7, steps=(2,), anchor_steps=4, num_steps=5):
    sigmas = sd3_sigmas(num_steps)
    cond = model.encode_prompts(["a red cube"], with_negative=True)
    x_init = torch.randn((1,) + SHAPE, generator=torch.Generator().manual_seed(3))
    traj = branched_rollout(model, cond, x_init, sigmas, list(steps), noise.shape[2], noise_level, 3.0,
                            anchor_steps=anchor_steps, generator=torch.Generator(), branch_noise=noise)
    return traj, sigmas, cond, x_init


def _noise(branches=3, steps=1, seed=7):
    return torch.randn((1, steps, branches) + SHAPE, generator=torch.Generator().manual_seed(seed))


def test_invariant7_branches_leave_from_the_anchor_prefix_with_one_sde_step():
    model = ToyFlowModel()
    noise = _noise()
    traj, sigmas, cond, x_init = _branches(model, noise)
    x = x_init
    with torch.no_grad():
        for i in range(3):
            v = model.velocity(x, sigmas[i].expand(1), cond, 3.0)
            assert torch.equal(traj.anchor_states[:, i], x)
            if i == 2:
                expected = sde_step_with_logprob(x.repeat(3, 1, 1, 1), v.repeat(3, 1, 1, 1), sigmas[2], sigmas[3],
                                                 sigmas[1], 0.7, noise=noise[0, 0])
                assert torch.allclose(traj.branch_next[0, 0], expected.next_x, atol=1e-6)
                assert torch.allclose(traj.branch_log_prob[0, 0], expected.log_prob, atol=1e-5)
            x = x + (sigmas[i + 1] - sigmas[i]) * v


def test_invariant7_equal_noise_gives_identical_branches():
    noise = _noise()
    noise[0, 0, 2] = noise[0, 0, 0]
    traj, *_ = _branches(ToyFlowModel(), noise)
    assert torch.equal(traj.branch_final[0, 0, 0], traj.branch_final[0, 0, 2])
    assert not torch.equal(traj.branch_final[0, 0, 0], traj.branch_final[0, 0, 1])


def test_invariant7_each_branch_depends_only_on_its_own_noise():
    noise = _noise()
    changed = noise.clone()
    changed[0, 0, 1] = -changed[0, 0, 1]
    first, *_ = _branches(ToyFlowModel(), noise)
    second, *_ = _branches(ToyFlowModel(), changed)
    assert torch.allclose(first.branch_final[0, 0, 0], second.branch_final[0, 0, 0], atol=1e-6)
    assert torch.allclose(first.branch_final[0, 0, 2], second.branch_final[0, 0, 2], atol=1e-6)
    assert not torch.allclose(first.branch_final[0, 0, 1], second.branch_final[0, 0, 1])


def test_invariant7_zero_noise_branches_reproduce_the_anchor_image_and_all_advantages_are_zero():
    model = ToyFlowModel()
    traj, *_ = _branches(model, _noise(steps=2), noise_level=0.0, steps=(0, 3), anchor_steps=5)
    images = model.decode(torch.cat([traj.anchor_final, traj.branch_final.flatten(0, 2)]))
    assert all(torch.equal(images[0], image) for image in images[1:])
    rewards = toy_reward(images[1:]).reshape(2, 3).T  # rows: branches, columns: branch steps
    adv = group_advantages(rewards, torch.zeros(3, dtype=torch.int64), global_std=False)
    assert torch.equal(adv, torch.zeros(3, 2))


def test_invariant8_noise_aware_weights_average_one_and_c_matches_the_sd3_constant():
    sigmas = sd3_sigmas(10, 3.0)
    weights, constant = noise_aware_weights(sigmas, list(range(9)), 0.7)
    assert abs(float(weights.mean()) - 1) < 1e-6
    assert abs(constant - 2.2522) < 1e-3
    assert weights[0] < weights[1]
    assert bool((weights[2:] <= weights[1:-1]).all())


def test_invariant8_weighted_gradient_coefficient_is_c_times_one_plus_half_a_squared_times_dt():
    sigmas, a = sd3_sigmas(10, 3.0), 0.7
    weights, constant = noise_aware_weights(sigmas, list(range(9)), a)
    for k in range(1, 9):
        # coefficient of v in mu, divided by the transition std s_k
        mean, std, _ = sde_step_mean(torch.zeros(1, 1), torch.ones(1, 1), sigmas[k], sigmas[k + 1], sigmas[1], a)
        coefficient = abs(float(mean)) / float(std)
        expected = constant * (1 + a * a / 2) * float(sigmas[k] - sigmas[k + 1])
        assert math.isclose(float(weights[k]) * coefficient, expected, rel_tol=1e-4)


def _loss_and_grad(algo, model, unit):
    for p in model.trainable_parameters():
        p.grad = None
    loss, metrics = algo.loss(model, unit)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.trainable_parameters()], metrics


@pytest.mark.parametrize("noise_block", [1, 2])
def test_invariant9_deduplicated_training_gives_the_duplicated_loss_and_gradient(noise_block):
    algo, model, rollout, gen = _tempflow(clip_range=0.05, noise_block=noise_block)
    rewards = toy_reward(rollout.query.images)
    rewards[: 4 * 3] = 0.3  # seed 0: constant reward at every step -> its rows are masked
    batch = algo.prepare_training(rollout, rewards, local_gather)
    assert not batch.keep[0].any() and batch.keep[1:].all()
    model.perturb_adapter(0.4)  # policy != old policy != reference: ratios move, some clip, KL > 0
    pairs = batch.pairs()
    from trainer.algorithms.branch_units import branch_step_unit, duplicated_transition_unit

    dedup = _loss_and_grad(algo, model, branch_step_unit(batch, pairs))
    dup = _loss_and_grad(algo, model, duplicated_transition_unit(batch, pairs))
    assert dedup[2]["kl"] > 0 and 0 < dedup[2]["clip_fraction"] < 1
    assert math.isclose(dedup[0], dup[0], rel_tol=1e-5, abs_tol=1e-7)
    for g_dedup, g_dup in zip(dedup[1], dup[1]):
        assert torch.allclose(g_dedup, g_dup, rtol=1e-4, atol=1e-7)
    assert dedup[2]["kl"] == dup[2]["kl"] or math.isclose(dedup[2]["kl"], dup[2]["kl"], rel_tol=1e-5)


def test_training_units_of_both_paths_cover_every_kept_branch_once():
    for dedup in (True, False):
        algo, model, rollout, gen = _tempflow(deduplicate_training=dedup)
        batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
        rows = 0
        for unit in algo.training_units(batch, gen):
            rows += int(unit.keep.sum()) if dedup else unit.states.shape[0]
        assert rows == int(batch.keep.sum()) == 4 * 4 * 3


def test_rollout_and_training_cost_match_the_section3_plan():
    S, B, N, K = 4, 3, 5, [0, 1, 2, 3]
    for dedup in (True, False):
        algo, model, rollout, gen = _tempflow(deduplicate_training=dedup)
        assert algo.cost.sampling_nfe == 2 * S * ((N - 1) + B * sum(N - 1 - k for k in K)) == model.nfe()
        assert algo.cost.reward_images == S * B * len(K) == rollout.query.images.shape[0]
        batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
        for unit in algo.training_units(batch, gen):
            algo.loss(model, unit)[0].backward()
        assert algo.cost.training_nfe == 2 * S * len(K) * (1 if dedup else B)
        assert algo.cost.reference_nfe == algo.cost.training_nfe


@pytest.mark.parametrize("noise_block", [1, 2])
def test_start_of_training_has_unit_ratio_and_zero_kl(noise_block):
    algo, model, rollout, gen = _tempflow(noise_block=noise_block)
    batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
    _, metrics = algo.loss(model, next(iter(algo.training_units(batch, gen))))
    assert abs(metrics["ratio_mean"] - 1) < 1e-5 and metrics["kl"] < 1e-12


def test_seed_groups_normalize_over_the_branches_of_one_seed_and_step():
    algo, model, rollout, gen = _tempflow()
    rewards = 100 * toy_reward(rollout.query.images)  # group stds >> eps = 1e-4
    batch = algo.prepare_training(rollout, rewards, local_gather)
    adv = batch.advantages  # [S, K, B]
    assert torch.allclose(adv.mean(dim=2), torch.zeros(4, 4), atol=1e-5)
    assert torch.allclose(adv.std(dim=2, correction=0), torch.ones(4, 4), atol=1e-2)


def test_prompt_group_option_normalizes_over_all_seeds_of_a_prompt():
    algo, model, rollout, gen = _tempflow(group_by="prompt")
    batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
    per_prompt = batch.advantages.reshape(2, 2, 4, 3).permute(0, 2, 1, 3).reshape(2, 4, 6)
    assert torch.allclose(per_prompt.mean(dim=2), torch.zeros(2, 4), atol=1e-5)
    assert not torch.allclose(batch.advantages.mean(dim=2), torch.zeros(4, 4), atol=1e-3)


def test_reward_matrix_by_branch_step_is_in_the_metrics():
    algo, model, rollout, gen = _tempflow()
    rewards = toy_reward(rollout.query.images)
    batch = algo.prepare_training(rollout, rewards, local_gather)
    grid = rewards.reshape(4, 4, 3)
    for k in range(4):
        assert math.isclose(batch.metrics[f"reward_by_step/k{k}_mean"], float(grid[:, k].mean()), rel_tol=1e-5)
        assert f"reward_by_step/k{k}_std" in batch.metrics


def test_every_image_carries_its_branch_ids_and_seed_step_group():
    algo, model, rollout, gen = _tempflow()
    query = rollout.query
    # image order: seed, branch step, branch
    index = ((2 * 4) + 3) * 3 + 1  # seed 2 (prompt 1, its seed 0), k=3, b=1
    assert query.branch[index] == {"group_id": 1, "seed": 0, "branch_step": 3, "sample_id": 1}
    assert query.prompts[index] == PROMPTS[1]
    assert len(set(query.group[index - 1:index + 2].tolist())) == 1
    assert query.group[index] != query.group[index + 2]


def test_branch_step_subset_option_branches_only_there_with_weights_averaging_one():
    algo, model, rollout, gen = _tempflow(branch_steps=(0, 3))
    assert rollout.query.images.shape[0] == 4 * 2 * 3
    assert {b["branch_step"] for b in rollout.query.branch} == {0, 3}
    assert abs(float(algo.weights.mean()) - 1) < 1e-6


def test_rollouts_of_prompt_chunks_concatenate_into_the_batch_of_their_union():
    algo = build_algorithm("tempflow", dict(num_steps=5, seeds_per_prompt=2, num_branches=3, guidance_scale=3.0))
    model = ToyFlowModel()
    parts = [algo.rollout(model, [p], [None], torch.Generator().manual_seed(i)) for i, p in enumerate(PROMPTS)]
    joined = algo.concat_rollouts(parts)
    rewards = [toy_reward(r.query.images) for r in parts]
    batch = algo.prepare_training(joined, torch.cat(rewards), local_gather)
    for i, part in enumerate(parts):
        alone = algo.prepare_training(part, rewards[i], local_gather)
        assert torch.allclose(batch.advantages[2 * i:2 * i + 2], alone.advantages)
    assert batch.seed_prompt.tolist() == [0, 0, 1, 1]
    unit = next(iter(algo.training_units(batch, torch.Generator())))
    assert torch.isfinite(algo.loss(model, unit)[0])


def test_noise_aware_weights_scale_the_surrogate_and_not_the_kl():
    losses = {}
    for weighted in (True, False):
        algo, model, rollout, gen = _tempflow(noise_aware_weights=weighted, clip_range=10.0)
        batch = algo.prepare_training(rollout, toy_reward(rollout.query.images), local_gather)
        model.perturb_adapter()
        unit = next(iter(algo.training_units(batch, torch.Generator().manual_seed(0))))
        _, metrics = algo.loss(model, unit)
        losses[weighted] = (metrics, unit)
    (weighted, unit), (plain, _) = losses[True], losses[False]
    assert weighted["kl"] == plain["kl"]
    assert not math.isclose(weighted["policy_loss"], plain["policy_loss"], rel_tol=1e-3)


def test_block_noise_branches_differ_from_each_other_only_by_block_constant_images():
    algo, model, rollout, gen = _tempflow(noise_block=2)
    first_step = rollout.trajectories.branch_next[:, 0]  # [S, B, 3, 4, 4] after the SDE step at k = 0
    differences = first_step[:, 1:] - first_step[:, :1]
    assert differences.abs().max() > 0
    torch.testing.assert_close(project_to_blocks(differences, 2), differences)


def test_antithetic_branches_come_in_pairs_mirrored_about_the_sde_mean():
    algo, model, rollout, gen = _tempflow(num_branches=4, antithetic_branches=True)
    after_step = rollout.trajectories.branch_next  # [S, |K|, B, 3, 4, 4]
    pair_mean = (after_step[:, :, :2] + after_step[:, :, 2:]) / 2  # branch b with branch b + B/2
    torch.testing.assert_close(pair_mean, pair_mean[:, :, :1].expand_as(pair_mean), rtol=0, atol=1e-5)
    assert (after_step[:, :, 0] - after_step[:, :, 1]).abs().max() > 0.1  # the two pairs are independent draws
    # each eps is standard normal, so a mirrored pair has equal log-probability under the sampling policy
    log_prob = rollout.trajectories.branch_log_prob
    torch.testing.assert_close(log_prob[:, :, :2], log_prob[:, :, 2:], rtol=1e-5, atol=1e-4)


def test_antithetic_branches_need_an_even_branch_count():
    with pytest.raises(ValueError, match="even num_branches"):
        build_algorithm("tempflow", dict(num_branches=3, antithetic_branches=True))
    with pytest.raises(ValueError, match="even num_branches"):
        build_algorithm("pave", dict(num_branches=5, antithetic_branches=True))
