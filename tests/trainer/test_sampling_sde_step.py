"""P1, the Flow-GRPO SDE step: invariants 1, 2, 4 and 14 of algorithms.md section 6."""
import math

import torch

from trainer.sampling.schedule import sd3_sigmas
from trainer.sampling.sde_step import sde_sigma_tilde, sde_step_mean, sde_step_with_logprob

torch.manual_seed(0)


def _state(batch=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, 2, 4, 4, generator=gen), torch.randn(batch, 2, 4, 4, generator=gen)


def test_invariant1_zero_noise_level_is_the_euler_step_with_zero_std():
    x, v = _state()
    step = sde_step_with_logprob(x, v, 0.7, 0.5, 0.96, noise_level=0.0)
    assert torch.allclose(step.mean, x + (0.5 - 0.7) * v, atol=1e-6)
    assert torch.equal(step.std, torch.zeros(3))
    assert torch.allclose(step.next_x, step.mean)
    assert step.log_prob is None


def test_invariant2_sigma_max_clamp_keeps_sigma_tilde_finite_and_v_coefficient_one():
    sigmas = sd3_sigmas(10)
    a = 0.7
    sigma_tilde = sde_sigma_tilde(sigmas[0], sigmas[1], a)
    assert torch.isfinite(sigma_tilde)
    assert math.isclose(float(sigma_tilde), a / math.sqrt(1 - float(sigmas[1])), rel_tol=1e-6)
    # v-coefficient of mu at sigma=1 is exactly dt: mu(x=0, v=1) = dt
    mean, _, _ = sde_step_mean(torch.zeros(1, 1), torch.ones(1, 1), sigmas[0], sigmas[1], sigmas[1], a)
    assert math.isclose(float(mean), float(sigmas[1] - sigmas[0]), rel_tol=1e-6)


def test_invariant4_log_prob_of_own_sample_is_the_standard_normal_density_of_eps():
    x, v = _state()
    sigmas = sd3_sigmas(10)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    step = sde_step_with_logprob(x, v, sigmas[3], sigmas[4], sigmas[1], 0.7, noise=eps)
    expected = (-(eps**2) / 2).mean(dim=(1, 2, 3)) - torch.log(step.std) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(step.log_prob, expected, atol=1e-5)


def test_rescoring_a_stored_sample_reproduces_its_log_prob():
    x, v = _state()
    sigmas = sd3_sigmas(10)
    sampled = sde_step_with_logprob(x, v, sigmas[2], sigmas[3], sigmas[1], 0.7, generator=torch.Generator())
    rescored = sde_step_with_logprob(x, v, sigmas[2], sigmas[3], sigmas[1], 0.7, next_x=sampled.next_x)
    assert torch.equal(rescored.log_prob, sampled.log_prob)


def test_per_row_sigmas_equal_separate_scalar_calls():
    x, v = _state(batch=2)
    sigmas = sd3_sigmas(10)
    rows = sde_step_with_logprob(x, v, sigmas[[0, 5]], sigmas[[1, 6]], sigmas[1], 0.7, next_x=x * 0.9)
    for r, i in enumerate([0, 5]):
        single = sde_step_with_logprob(x[r:r + 1], v[r:r + 1], sigmas[i], sigmas[i + 1], sigmas[1], 0.7,
                                       next_x=x[r:r + 1] * 0.9)
        assert torch.allclose(rows.mean[r], single.mean[0], atol=1e-6)
        assert torch.allclose(rows.log_prob[r], single.log_prob[0], atol=1e-5)


def test_math_runs_in_fp32_for_bf16_inputs():
    x, v = _state()
    step = sde_step_with_logprob(x.bfloat16(), v.bfloat16(), 0.5, 0.4, 0.96, 0.7, generator=torch.Generator())
    assert step.mean.dtype == torch.float32 and step.log_prob.dtype == torch.float32


def _point_mass_marginal_std(num_steps: int) -> float:
    """P1 with the exact velocity v = (x - m)/sigma of a point mass m = 0, from sigma 0.9 to 0.5."""
    gen = torch.Generator().manual_seed(0)
    x = 0.9 * torch.randn(200_000, 1, generator=gen)
    grid = torch.linspace(0.9, 0.5, num_steps + 1)
    for i in range(num_steps):
        x = sde_step_with_logprob(x, x / grid[i], grid[i], grid[i + 1], 1.0, 0.7, generator=gen).next_x
    return float(x.std())


def test_invariant14_sde_marginal_error_is_first_order_in_the_step():
    assert abs(_point_mass_marginal_std(1) - 1.416) < 0.01
    assert abs(_point_mass_marginal_std(4) - 0.554) < 0.01
    assert abs(_point_mass_marginal_std(64) - 0.502) < 0.01
