"""P4 group advantages and P5 clipped surrogate: invariant 6 of algorithms.md section 6, and the rank gather."""
import torch

from trainer.advantages import (clamp_advantages, group_advantages, local_gather, nonzero_advantage_mask,
                                stable_group_key)
from trainer.policy_loss import clipped_surrogate


def _rewards():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.cat([torch.randn(6, generator=gen) * 3 + 1, torch.randn(6, generator=gen) * 0.5 - 2])
    keys = torch.tensor([stable_group_key("a cat")] * 6 + [stable_group_key("a dog")] * 6)
    return rewards, keys


def test_invariant6_advantages_have_zero_mean_in_every_group():
    rewards, keys = _rewards()
    for global_std in (False, True):
        adv = group_advantages(rewards, keys, global_std=global_std)
        for key in keys.unique():
            assert abs(float(adv[keys == key].mean())) < 1e-5


def test_invariant6_fixed_variant_has_unit_population_std_per_group():
    rewards, keys = _rewards()
    adv = group_advantages(rewards, keys, global_std=False)
    for key in keys.unique():
        assert abs(float(adv[keys == key].std(correction=0)) - 1.0) < 1e-3


def test_invariant6_original_equals_fixed_with_a_single_prompt_group():
    rewards, _ = _rewards()
    keys = torch.full((12,), stable_group_key("one prompt"))
    assert torch.allclose(group_advantages(rewards, keys, global_std=True),
                          group_advantages(rewards, keys, global_std=False))


def test_invariant6_batch_std_divides_by_the_std_of_all_rewards():
    rewards, keys = _rewards()
    adv = group_advantages(rewards, keys, global_std=True)
    first = keys == keys[0]
    expected = (rewards[first] - rewards[first].mean()) / (rewards.double().std(correction=0) + 1e-4)
    assert torch.allclose(adv[first], expected.float(), atol=1e-6)


def test_invariant6_constant_reward_group_gets_zero_advantage_and_is_masked():
    rewards, keys = _rewards()
    rewards[6:] = 0.25
    adv = group_advantages(rewards, keys, global_std=False)
    assert torch.equal(adv[6:], torch.zeros(6))
    mask = nonzero_advantage_mask(adv.unsqueeze(1))
    assert mask[:6].all() and not mask[6:].any()


def test_zero_advantage_mask_is_padded_to_the_minibatch_multiple():
    adv = torch.tensor([[1.0], [-1.0], [0.5], [0.0], [0.0], [0.0]])
    mask = nonzero_advantage_mask(adv, divisible_by=2, generator=torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 4 and mask[:3].all()


def test_statistics_are_gathered_across_ranks():
    """Two ranks, each holding half of each group: every rank's advantages equal the one-process ones."""
    rewards, keys = _rewards()
    full = group_advantages(rewards, keys, global_std=True)
    rank_rows = [torch.tensor([0, 1, 2, 6, 7, 8]), torch.tensor([3, 4, 5, 9, 10, 11])]
    for rank, rows in enumerate(rank_rows):
        def gather(local, rank=rank):
            other = rank_rows[1 - rank]
            source = rewards if local.dtype != torch.int64 else keys
            parts = [local, source[other].to(local.dtype).reshape(-1, *local.shape[1:])]
            return torch.cat(parts if rank == 0 else parts[::-1])
        assert torch.allclose(group_advantages(rewards[rows], keys[rows], gather, global_std=True), full[rows])


def test_matrix_rewards_are_normalized_per_column():
    rewards = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    adv = group_advantages(rewards, torch.tensor([7, 7]), local_gather, global_std=False)
    assert torch.allclose(adv, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-3)


def test_advantages_are_clamped_to_adv_clip_max():
    assert torch.equal(clamp_advantages(torch.tensor([-9.0, 2.0, 7.0]), 5.0), torch.tensor([-5.0, 2.0, 5.0]))


def test_surrogate_at_the_old_policy_is_minus_the_weighted_advantage():
    log_prob = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -0.5, 2.0])
    terms = clipped_surrogate(log_prob, log_prob.detach().clone(), adv, 1e-4, torch.tensor([2.0, 1.0, 0.5]))
    assert torch.allclose(terms.per_row, -adv * torch.tensor([2.0, 1.0, 0.5]))
    assert terms.clip_fraction == 0.0


def test_surrogate_clips_the_ratio_in_the_pessimistic_direction():
    old = torch.zeros(2)
    log_prob = torch.log(torch.tensor([1.5, 1.5])).requires_grad_()
    terms = clipped_surrogate(log_prob, old, torch.tensor([1.0, -1.0]), clip_range=0.2)
    # A > 0: min(r, 1.2) -> -1.2 ; A < 0: max(r, 0.8) -> 1.5
    assert torch.allclose(terms.per_row, torch.tensor([-1.2, 1.5]), atol=1e-6)
    terms.per_row.sum().backward()
    assert log_prob.grad[0] == 0 and log_prob.grad[1] != 0
