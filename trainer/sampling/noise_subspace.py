"""Block-constant exploration noise: the subspace an SDE step may put its noise in (an option, not in the papers).

The papers' P1 step (docs/algorithms.md section 1) adds isotropic noise s * eps to every latent element. With a
block size b > 1 the noise lives in the subspace of images that are constant on b x b spatial blocks:

    P z = upsample_nearest(z, b) / b          z ~ N(0, I) of shape [C, H/b, W/b]; P has orthonormal columns
    P^T t = b * avgpool(t, b)                 the subspace coordinates of t
    P P^T t = upsample_nearest(avgpool(t, b), b)     the orthogonal projection onto the subspace

The step's noise s * P z is exactly the isotropic noise s * eps projected onto the subspace (same variance of
every block mean), and the SDE's score correction is projected with it, so that dx = [v + P P^T c] dt + s P dW
keeps the ODE's marginals (Fokker-Planck with covariance s^2 P P^T). The log-probability is the Gaussian density
of the subspace coordinates, N(P^T x'; P^T mu, s^2 I), averaged over the H*W*C/b^2 coordinates; the component of
x' outside the subspace is a deterministic function of x (no gradient through it, like the ODE steps around a
TempFlow-GRPO branch).

Why: the score-function gradient's noise grows with the number of noise dimensions, and a reward that reads
objects, counts and positions depends on the low frequencies. b = 1 is the isotropic step of the papers.
Measured on the shapes world (README, "Gradient signal"; bench/gradient_snr.py --noise-blocks): b = 4 did not raise
the fraction of the TempFlow-GRPO gradient that independent batches share, and did not help the demo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_noise_block(shape: tuple[int, ...] | torch.Size, block: int) -> None:
    """Raise unless `block` >= 1 divides the last two (spatial) dimensions of `shape`."""
    if block < 1:
        raise ValueError(f"noise_block must be >= 1, got {block}")
    if block > 1 and (len(shape) < 2 or shape[-1] % block or shape[-2] % block):
        raise ValueError(f"noise_block {block} must divide the spatial size {tuple(shape[-2:])} of the latent")


def block_noise_shape(shape: tuple[int, ...] | torch.Size, block: int) -> tuple[int, ...]:
    """Shape of z for states of `shape` ([..., H, W] -> [..., H/b, W/b])."""
    check_noise_block(shape, block)
    if block == 1:
        return tuple(shape)
    return (*shape[:-2], shape[-2] // block, shape[-1] // block)


def _pool(t: torch.Tensor, block: int) -> torch.Tensor:
    lead = t.shape[:-2]
    pooled = F.avg_pool2d(t.reshape(-1, 1, *t.shape[-2:]), block)
    return pooled.reshape(*lead, *pooled.shape[-2:])


def embed_block_noise(z: torch.Tensor, block: int) -> torch.Tensor:
    """P z: coordinates [..., H/b, W/b] as a block-constant tensor [..., H, W] with orthonormal scaling."""
    if block == 1:
        return z
    return z.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1) / block


def block_coordinates(t: torch.Tensor, block: int) -> torch.Tensor:
    """P^T t: the subspace coordinates of t [..., H, W] -> [..., H/b, W/b]."""
    if block == 1:
        return t
    check_noise_block(t.shape, block)
    return _pool(t, block) * block


def project_to_blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """P P^T t: t with every b x b block replaced by its mean."""
    if block == 1:
        return t
    check_noise_block(t.shape, block)
    return embed_block_noise(_pool(t, block), block) * block
