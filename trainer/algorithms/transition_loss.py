"""The per-transition GRPO loss used by Flow-GRPO (Fixed) and TempFlow-GRPO's duplicated training path.

For each row (a stored transition x_j -> x_{j+1} of one sample at step j, docs/algorithms.md P5 with P1/P2/P3):
    l_theta = P1 (or P2) log-prob of the stored x_{j+1} under v_theta(x_j, sigma_j)      [gradient]
    L       = mean_rows max(-w A r, -w A clip(r, 1 +- eps)) + beta * mean_rows KL_j(theta || ref)
with A clamped to +-adv_clip_max, w the per-row step weight (1 for Flow-GRPO; C s_j for TempFlow) and the KL
unweighted. The reference velocity is evaluated without grad under model.reference() only when beta > 0.
For CPS (P2) the KL uses s as the scale in both kl modes (CPS has no sigma~).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainer.advantages import clamp_advantages
from trainer.algorithms.base import Cost
from trainer.algorithms.model_calls import nfe_per_sample
from trainer.models.base import Conditioning, FlowModel
from trainer.policy_loss import clipped_surrogate
from trainer.sampling.cps_step import cps_step_with_logprob
from trainer.sampling.kl import KLMode, kl_to_reference
from trainer.sampling.sde_step import sde_step_with_logprob


@dataclass
class TransitionUnit:
    """A minibatch of stored transitions, one row each (rows may sit at different steps)."""

    states: torch.Tensor  # [b, ...] x_j
    next_states: torch.Tensor  # [b, ...] the sampled x_{j+1}
    old_log_prob: torch.Tensor  # [b] l_old(x_{j+1} | x_j) stored at sampling time
    advantages: torch.Tensor  # [b] A of the row at step j (unclamped)
    weights: torch.Tensor  # [b] per-step surrogate weight w_j (1 for Flow-GRPO)
    sigma: torch.Tensor  # [b] sigma_j
    sigma_next: torch.Tensor  # [b] sigma_{j+1}
    step: torch.Tensor  # [b] int64 step index j (for logging)
    cond: Conditioning  # b rows of text conditioning


@dataclass
class TransitionLossSettings:
    """What the per-transition loss needs from the algorithm's config."""

    guidance_scale: float  # CFG scale used when sampling (and therefore when training)
    noise_level: float  # a (P1) or eta (P2)
    sigma_max: float  # schedule sigma_1, for P1's sigma = 1 clamp
    clip_range: float  # PPO ratio clip eps
    adv_clip_max: float  # |A| clamp at loss time
    beta: float  # KL coefficient (0 = no reference forward)
    kl_mode: KLMode  # "exact" or "flowgrpo_code" (P3)
    sde_type: Literal["sde", "cps"] = "sde"  # P1 or P2 transition
    noise_block: int = 1  # b: P1 noise on b x b block-constant images (trainer.sampling.noise_subspace); 1 = papers


def transition_step(x: torch.Tensor, v: torch.Tensor, unit: TransitionUnit, settings: TransitionLossSettings):
    """(log_prob [b], mean, std [b], kl scale [b]) of the unit's stored next states under velocity v."""
    if settings.sde_type == "cps":
        step = cps_step_with_logprob(x, v, unit.sigma, unit.sigma_next, settings.noise_level,
                                     next_x=unit.next_states)
        return step.log_prob, step.mean, step.std, step.std
    step = sde_step_with_logprob(x, v, unit.sigma, unit.sigma_next, settings.sigma_max, settings.noise_level,
                                 next_x=unit.next_states, noise_block=settings.noise_block)
    return step.log_prob, step.mean, step.std, step.sigma_tilde


def transition_loss(model: FlowModel, unit: TransitionUnit, settings: TransitionLossSettings,
                    cost: Cost) -> tuple[torch.Tensor, dict[str, float]]:
    """P5 loss of one minibatch of transitions; counts its forwards in `cost`."""
    rows = unit.states.shape[0]
    per_sample = nfe_per_sample(settings.guidance_scale)
    v = model.velocity(unit.states, unit.sigma, unit.cond, settings.guidance_scale)
    cost.training_nfe += rows * per_sample
    log_prob, mean, std, kl_scale = transition_step(unit.states, v, unit, settings)
    advantages = clamp_advantages(unit.advantages, settings.adv_clip_max)
    terms = clipped_surrogate(log_prob, unit.old_log_prob, advantages, settings.clip_range, unit.weights)
    policy_loss = terms.per_row.mean()
    metrics = {"policy_loss": float(policy_loss.detach()), "approx_kl": terms.approx_kl,
               "clip_fraction": terms.clip_fraction, "ratio_mean": float(terms.ratio.mean())}
    loss = policy_loss
    if settings.beta > 0:
        with torch.no_grad(), model.reference():
            v_ref = model.velocity(unit.states, unit.sigma, unit.cond, settings.guidance_scale)
        cost.reference_nfe += rows * per_sample
        _, ref_mean, _, _ = transition_step(unit.states, v_ref, unit, settings)
        kl = kl_to_reference(mean, ref_mean, std, kl_scale, settings.kl_mode, settings.noise_block).mean()
        loss = loss + settings.beta * kl
        metrics["kl"] = float(kl.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
