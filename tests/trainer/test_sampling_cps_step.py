"""P2, the CPS step: invariants 1 and 14 of algorithms.md section 6."""
import torch

from trainer.sampling.cps_step import cps_step_with_logprob


def test_invariant1_cps_with_zero_eta_is_the_euler_step():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    step = cps_step_with_logprob(x, v, 0.8, 0.6, eta=0.0)
    assert torch.allclose(step.mean, x + (0.6 - 0.8) * v, atol=1e-6)
    assert torch.equal(step.std, torch.zeros(2))


def test_cps_log_prob_is_minus_mean_squared_residual():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    eps = torch.randn(2, 8, generator=gen)
    step = cps_step_with_logprob(x, v, 0.8, 0.6, eta=0.8, noise=eps)
    assert torch.allclose(step.log_prob, -((step.std[:, None] * eps) ** 2).mean(dim=1), atol=1e-6)


def test_invariant14_one_cps_step_hits_the_target_marginal():
    gen = torch.Generator().manual_seed(0)
    x = 0.9 * torch.randn(200_000, 1, generator=gen)
    out = cps_step_with_logprob(x, x / 0.9, 0.9, 0.5, eta=0.8, generator=gen).next_x
    assert abs(float(out.std()) - 0.5) < 0.005
