"""Pave-GRPO on the toy flow model: invariants 10-13 of algorithms.md section 6, the avg-velocity variant, the
rollout plan and cost, advantages and logging."""
import math

import torch

from tests.support.toy_flow_model import ToyFlowModel, toy_reward
from trainer.advantages import local_gather
from trainer.algorithms.branch_units import branch_step_unit
from trainer.algorithms.pave import paved_log_prob, paved_transition
from trainer.algorithms.registry import build_algorithm
from trainer.sampling.sde_step import gaussian_log_prob, sde_step_mean

torch.set_num_threads(1)
PROMPTS = ["a red cube", "two blue balls"]


def _pave(model=None, **overrides):
    config = dict(num_steps=8, num_branches=4, branch_steps=(0, 2), noise_level=0.8)
    config.update(overrides)
    algo = build_algorithm("pave", config)
    model = model or ToyFlowModel()
    gen = torch.Generator().manual_seed(0)
    rollout = algo.rollout(model, PROMPTS, [None, None], gen)
    batch = algo.prepare_training(rollout, 10 * toy_reward(rollout.query.images), local_gather)
    return algo, model, rollout, batch


def _grad(algo, model, unit):
    for p in model.trainable_parameters():
        p.grad = None
    loss, _ = algo.loss(model, unit)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.trainable_parameters()])


def test_invariant10_n_equal_one_is_the_flow_grpo_coarse_step():
    algo, model, rollout, batch = _pave()
    model.perturb_adapter()
    for slot in (0, 1):  # k = 0 exercises the sigma = 1 clamp
        unit = branch_step_unit(batch, torch.tensor([[0, slot]]))
        v1 = model.velocity(unit.states, unit.sigma, unit.cond, 1.0)
        t1 = paved_transition(model, unit.states, v1, unit.sigma, unit.sigma_next, float(algo.sigmas[1]), 0.8,
                              unit.cond, 1.0, n=1)
        mean, std, _ = sde_step_mean(unit.states, v1, unit.sigma, unit.sigma_next, algo.sigmas[1], 0.8)
        assert torch.allclose(t1.mean, mean, atol=1e-6) and torch.allclose(t1.var, std**2)


def test_invariant10_empty_decomposition_is_one_step_reinforce_on_the_branches():
    algo, model, rollout, batch = _pave(decomposition=())
    model.perturb_adapter()
    unit = branch_step_unit(batch, torch.tensor([[1, 1]]))
    _, grad = _grad(algo, model, unit)
    for p in model.trainable_parameters():
        p.grad = None
    v = model.velocity(unit.states, unit.sigma, unit.cond, 1.0)
    mean, std, _ = sde_step_mean(unit.states, v, unit.sigma, unit.sigma_next, algo.sigmas[1], 0.8)
    log_prob = gaussian_log_prob(unit.next_states[0], mean.expand_as(unit.next_states[0]), std)
    (-(unit.advantages[0] * log_prob).mean()).backward()
    reinforce = torch.cat([p.grad.reshape(-1) for p in model.trainable_parameters()])
    assert torch.allclose(grad, reinforce, rtol=1e-4, atol=1e-8)


def test_invariant11_loss_is_zero_at_the_start_of_every_update_but_the_gradient_is_not():
    for variant in ("pave_official", "pave_avgvel"):
        algo, model, rollout, batch = _pave(variant=variant)
        model.perturb_adapter()
        for unit in algo.training_units(batch, torch.Generator()):
            loss, grad = _grad(algo, model, unit)
            assert abs(float(loss)) < 1e-6
            assert float(grad.abs().sum()) > 0


def test_invariant12_shifting_every_branch_state_by_a_constant_leaves_the_gradient_unchanged():
    algo, model, rollout, batch = _pave()
    model.perturb_adapter()
    unit = branch_step_unit(batch, torch.tensor([[0, 1]]))
    _, grad = _grad(algo, model, unit)
    shift = torch.randn(unit.next_states.shape[2:], generator=torch.Generator().manual_seed(4))
    unit.next_states = unit.next_states + shift
    _, shifted = _grad(algo, model, unit)
    assert torch.allclose(grad, shifted, rtol=1e-4, atol=1e-7)


def test_invariant13_sub_step_times_nfe_and_gradient_through_the_sub_path():
    algo, model, rollout, batch = _pave()
    model.perturb_adapter()
    unit = branch_step_unit(batch, torch.tensor([[0, 1]]))
    sigma, delta = float(unit.sigma), float(unit.sigma_next - unit.sigma)
    model.evaluations.clear()
    before = algo.cost.training_nfe
    _, grad = _grad(algo, model, unit)
    times = [float(e.sigmas) for e in model.evaluations]
    expected = [sigma, sigma + delta / 2, sigma + delta / 3, sigma + 2 * delta / 3]
    assert all(math.isclose(t, e, abs_tol=1e-6) for t, e in zip(times, expected)) and len(times) == 4
    assert algo.cost.training_nfe - before == 1 + (2 - 1) + (3 - 1)
    algo.config.detach_substeps = True
    _, detached = _grad(algo, model, unit)
    assert not torch.allclose(grad, detached, rtol=1e-3)


class StraightFlowModel(ToyFlowModel):
    """A flow whose velocity is constant along every path (depends on the prompt only)."""

    def _raw_velocity(self, x, sigma, text):
        delta = self.lora_scale * (text @ self.lora_a[:, -text.shape[1]:].T) @ self.lora_b.T if self.adapter_enabled \
            else torch.zeros(text.shape[0], self.lora_b.shape[0])
        per_prompt = text @ self.w_text.T + delta.sum(dim=1, keepdim=True)
        return per_prompt.reshape(x.shape) + 0 * x


def test_avgvel_variant_equals_t1_for_a_straight_flow_while_official_does_not():
    model = StraightFlowModel()
    algo, model, rollout, batch = _pave(model=model)
    unit = branch_step_unit(batch, torch.tensor([[0, 1]]))
    algo.config.variant = "pave_avgvel"
    coarse, paved = algo.transitions(model, unit)
    for t in paved:
        assert torch.allclose(t.mean, coarse.mean, atol=1e-6) and torch.allclose(t.var, coarse.var)
    algo.config.variant = "pave_official"
    coarse, paved = algo.transitions(model, unit)
    assert not torch.allclose(paved[0].mean, coarse.mean, atol=1e-6)
    assert bool((paved[0].var < coarse.var).all())  # 1/var_Tn exceeds T_1's: no renormalisation


def test_rollout_and_training_cost_match_the_section4_plan():
    algo, model, rollout, batch = _pave()
    N, G, K, S = 8, 4, [0, 2], 2
    assert algo.cost.sampling_nfe == S * (N + G * sum(N - 1 - k for k in K)) == model.nfe()
    assert algo.cost.reward_images == S * (1 + len(K) * G) == rollout.query.images.shape[0]
    for unit in algo.training_units(batch, torch.Generator()):
        algo.loss(model, unit)[0].backward()
    assert algo.cost.training_nfe == S * len(K) * 4


def test_advantages_use_the_branches_at_the_same_step_with_sample_std():
    algo, model, rollout, batch = _pave()
    adv = batch.advantages  # [S, K, G]
    assert torch.allclose(adv.mean(dim=2), torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(adv.std(dim=2, correction=1), torch.ones(2, 2), atol=1e-4)


def test_anchor_images_are_scored_and_logged_with_the_reward_matrix():
    algo, model, rollout, batch = _pave()
    per_seed = 1 + 2 * 4  # the anchor, then |K| x G branches
    assert [rollout.query.branch[i]["branch_step"] for i in (0, per_seed)] == [-1, -1]
    assert rollout.query.branch[1 + 4 + 1] == {"group_id": 0, "seed": 0, "branch_step": 2, "sample_id": 1}
    assert rollout.query.branch[per_seed + 1] == {"group_id": 1, "seed": 0, "branch_step": 0, "sample_id": 0}
    assert "reward/anchor_mean" in batch.metrics
    assert {"reward_by_step/k0_mean", "reward_by_step/k2_std"} <= set(batch.metrics)


def test_rollouts_of_prompt_chunks_concatenate_into_the_batch_of_their_union():
    algo = build_algorithm("pave", dict(num_steps=8, num_branches=4, branch_steps=(0, 2)))
    model = ToyFlowModel()
    parts = [algo.rollout(model, [p], [None], torch.Generator().manual_seed(i)) for i, p in enumerate(PROMPTS)]
    joined = algo.concat_rollouts(parts)
    rewards = [10 * toy_reward(r.query.images) for r in parts]
    batch = algo.prepare_training(joined, torch.cat(rewards), local_gather)
    for i, part in enumerate(parts):
        alone = algo.prepare_training(part, rewards[i], local_gather)
        assert torch.allclose(batch.advantages[i], alone.advantages[0])
        assert torch.equal(batch.branch_next[i], alone.branch_next[0])
    assert joined.query.prompts[9] == PROMPTS[1] and int(joined.seed_prompt[1]) == 1


def test_block_noise_option_gives_zero_loss_at_the_start_and_n1_is_the_block_coarse_step():
    algo, model, rollout, batch = _pave(noise_block=2)
    model.perturb_adapter()
    unit = branch_step_unit(batch, torch.tensor([[0, 1]]))
    loss, grad = _grad(algo, model, unit)
    assert abs(float(loss)) < 1e-6 and float(grad.abs().sum()) > 0
    v1 = model.velocity(unit.states, unit.sigma, unit.cond, 1.0)
    t1 = paved_transition(model, unit.states, v1, unit.sigma, unit.sigma_next, float(algo.sigmas[1]), 0.8,
                          unit.cond, 1.0, n=1, noise_block=2)
    mean, std, _ = sde_step_mean(unit.states, v1, unit.sigma, unit.sigma_next, algo.sigmas[1], 0.8, 2)
    expected = gaussian_log_prob(unit.next_states[0], mean.expand_as(unit.next_states[0]), std, 2)
    constant = torch.log(std.reshape(-1)) + math.log(math.sqrt(2 * math.pi))  # paved_log_prob drops both
    torch.testing.assert_close(paved_log_prob(unit.next_states, t1)[0], expected + constant, rtol=1e-5, atol=1e-5)
