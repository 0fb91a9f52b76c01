"""P3, KL to the reference policy: invariant 5 of algorithms.md section 6."""
import torch

from trainer.sampling.kl import kl_to_reference
from trainer.sampling.schedule import sd3_sigmas
from trainer.sampling.sde_step import sde_step_mean

SIGMAS = sd3_sigmas(10)


def _means(step: int, v_policy: torch.Tensor, v_ref: torch.Tensor, x: torch.Tensor):
    mean, std, sigma_tilde = sde_step_mean(x, v_policy, SIGMAS[step], SIGMAS[step + 1], SIGMAS[1], 0.7)
    ref_mean, _, _ = sde_step_mean(x, v_ref, SIGMAS[step], SIGMAS[step + 1], SIGMAS[1], 0.7)
    return mean, ref_mean, std.reshape(-1).expand(x.shape[0]), sigma_tilde.reshape(-1).expand(x.shape[0])


def test_invariant5_kl_of_the_reference_to_itself_is_zero():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    mean, ref_mean, std, st = _means(3, v, v, x)
    assert torch.equal(kl_to_reference(mean, ref_mean, std, st, "exact"), torch.zeros(3))


def test_invariant5_exact_kl_equals_the_closed_form_and_code_variant_is_dt_times_it():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=gen)
    v, v_ref = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    for step in (0, 4, 8):
        mean, ref_mean, std, st = _means(step, v, v_ref, x)
        exact = kl_to_reference(mean, ref_mean, std, st, "exact")
        sigma, dt = SIGMAS[step], (SIGMAS[step] - SIGMAS[step + 1])
        closed = (dt / 2) * (st * (1 - sigma) / (2 * sigma) + 1 / st) ** 2 * ((v - v_ref) ** 2).mean(dim=(1, 2, 3))
        assert torch.allclose(exact, closed, rtol=1e-4)
        code = kl_to_reference(mean, ref_mean, std, st, "flowgrpo_code")
        assert torch.allclose(code, dt * exact, rtol=1e-4)
