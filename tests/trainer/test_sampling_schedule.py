"""The SD3 (diffusers FlowMatchEuler, shift 3) and Pave (uniform, shifted) schedules (algorithms.md 'Schedules')."""
import torch

from trainer.sampling.schedule import num_trained_steps, sd3_sigmas, uniform_shifted_sigmas


def test_sd3_schedule_runs_from_one_to_zero_and_decreases():
    sigmas = sd3_sigmas(10, 3.0)
    assert sigmas.shape == (11,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_sd3_schedule_has_the_diffusers_last_sigma_quirk():
    assert abs(float(sd3_sigmas(10, 3.0)[9]) - 0.00896) < 1e-4


def test_sd3_schedule_matches_diffusers_flow_match_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(10)
    assert torch.allclose(sd3_sigmas(10, 3.0), scheduler.sigmas.float(), atol=1e-6)


def test_pave_schedule_is_the_shifted_uniform_grid():
    sigmas = uniform_shifted_sigmas(16, 3.0)
    u = 1 - torch.arange(17, dtype=torch.float64) / 16
    assert torch.allclose(sigmas.double(), 3 * u / (1 + 2 * u), atol=1e-7)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_timestep_fraction_099_trains_nine_of_ten_steps():
    assert num_trained_steps(10, 0.99) == 9
    assert num_trained_steps(10, 1.0) == 10
