"""Block-constant SDE noise (trainer.sampling.noise_subspace): an orthonormal subspace, the P1 step restricted to
it keeps the ODE's marginals, and its log-probability is the density of the block coordinates."""
import math

import pytest
import torch

from trainer.sampling.noise_subspace import (block_coordinates, block_noise_shape, check_noise_block,
                                             embed_block_noise, project_to_blocks)
from trainer.sampling.sde_step import sde_step_with_logprob


def test_embedded_noise_has_its_noise_as_block_coordinates_so_the_basis_is_orthonormal():
    z = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = embed_block_noise(z, 4)
    assert x.shape == (5, 3, 16, 16)
    torch.testing.assert_close(block_coordinates(x, 4), z)
    torch.testing.assert_close((x**2).sum(), (z**2).sum())  # |P z| = |z|


def test_projection_is_idempotent_keeps_block_means_and_block_one_is_the_identity():
    t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    projected = project_to_blocks(t, 2)
    torch.testing.assert_close(project_to_blocks(projected, 2), projected)
    torch.testing.assert_close(block_coordinates(projected, 2), block_coordinates(t, 2))
    assert project_to_blocks(t, 1) is t and block_coordinates(t, 1) is t and block_noise_shape(t.shape, 1) == t.shape


def test_a_block_that_does_not_divide_the_latent_is_a_clear_error():
    with pytest.raises(ValueError, match="must divide the spatial size"):
        check_noise_block((3, 10, 10), 4)
    with pytest.raises(ValueError, match=">= 1"):
        check_noise_block((3, 8, 8), 0)


def test_block_noise_step_moves_only_block_constant_directions_beyond_the_projected_mean():
    gen = torch.Generator().manual_seed(2)
    x, v = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    step = sde_step_with_logprob(x, v, 0.8, 0.7, 0.9, 0.7, generator=gen, noise_block=4)
    residual = step.next_x - step.mean
    torch.testing.assert_close(project_to_blocks(residual, 4), residual)


def test_block_noise_log_prob_of_its_own_sample_is_the_normal_density_of_the_block_noise():
    gen = torch.Generator().manual_seed(3)
    x, v = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    z = torch.randn(4, 3, 2, 2, generator=gen)
    step = sde_step_with_logprob(x, v, 0.8, 0.7, 0.9, 0.7, noise=z, noise_block=4)
    expected = (-(z**2) / 2 - math.log(math.sqrt(2 * math.pi))).mean(dim=(1, 2, 3)) - torch.log(step.std)
    torch.testing.assert_close(step.log_prob, expected)
    rescored = sde_step_with_logprob(x, v, 0.8, 0.7, 0.9, 0.7, next_x=step.next_x, noise_block=4)
    torch.testing.assert_close(rescored.log_prob, step.log_prob)


def _gaussian_data_marginal(noise_block: int, project_correction: bool = True) -> tuple[float, float]:
    """Data x0 ~ N(0, I), exact velocity E[eps - x0 | x] = (2 sigma - 1) / V x with V = (1-sigma)^2 + sigma^2;
    64 block-noise SDE steps from sigma 0.9 to 0.5; (per-element variance, variance of 4x4 block means)."""
    gen = torch.Generator().manual_seed(4)
    grid = torch.linspace(0.9, 0.5, 65)
    x = torch.randn(4096, 1, 8, 8, generator=gen) * math.sqrt(0.1**2 + 0.9**2)
    for i in range(64):
        sigma = float(grid[i])
        velocity = (2 * sigma - 1) / ((1 - sigma) ** 2 + sigma**2) * x
        block = noise_block if project_correction else 1
        step = sde_step_with_logprob(x, velocity, grid[i], grid[i + 1], 1.0, 0.7, noise_block=block, next_x=x)
        z = torch.randn(block_noise_shape(x.shape, noise_block), generator=gen)
        x = step.mean + step.std.reshape(-1, 1, 1, 1) * embed_block_noise(z, noise_block)
    return float(x.var()), float(block_coordinates(x, 4).var() / 16)


def test_block_noise_sde_keeps_the_ode_marginal_of_gaussian_data():
    target = 0.5**2 + 0.5**2  # V at sigma 0.5, for every element and, the data being white, per block-mean 16x
    element_var, block_mean_var = _gaussian_data_marginal(4)
    assert abs(element_var - target) < 0.02 and abs(block_mean_var * 16 - target) < 0.04
    # the isotropic score correction with block noise contracts the unexplored high frequencies: marginal lost
    wrong_var, _ = _gaussian_data_marginal(4, project_correction=False)
    assert wrong_var < target - 0.1
