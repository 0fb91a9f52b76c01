"""Anchor-and-branch rollouts shared by TempFlow-GRPO and Pave-GRPO (docs/algorithms.md sections 3 and 4).

Per seed: one deterministic ODE anchor x_0, x_1, ... (Euler, a=0); at each branch step k in K, B branches take ONE
P1 SDE step from the anchor state x_k reusing the anchor's velocity v(x_k) (no new NFE):
    x'_{k,b} = mu_k(x_k, v_k) + s_k eps_b
and then finish by ODE from sigma_{k+1} to 0 ((N-1-k) NFE each).

No work is repeated (the official code recomputes prefixes per branch): the anchor prefix is computed once, and the
ODE suffixes of ALL branches (every seed, every k) advance together: at loop step i one batched velocity call covers
the anchor rows still running and every branch that left the anchor before i, all at the same sigma_i. Rows never
interact, so this is the same math as running each branch alone (up to float reassociation in batched matmuls).

Antithetic branches (an option, not in the papers; off by default): with `antithetic=True` the B branches of a
(seed, k) come in mirrored pairs, eps_{b + B/2} = -eps_b, so each pair lands symmetrically about the SDE mean mu_k.
This is the mirrored sampling of evolution strategies: in the group's score-function gradient
sum_b A_b (eps_b / s_k) . d mu_k, every part of the reward that is even in eps (curvature, most of a thresholded
reward's noise) cancels within a pair and the part linear in eps is kept. Each eps_b is still N(0, I) marginally,
so log-probabilities, ratios and the KL are unchanged; only the branches' joint law changes.

`anchor_steps` is the number of anchor velocity evaluations: N-1 for TempFlow-GRPO (the SD3 perstep pipeline loops
over timesteps[:-1] and never finishes the anchor), N for Pave-GRPO (the anchor image is scored and logged).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.algorithms.model_calls import nfe_per_sample, velocity_in_chunks
from trainer.models.base import Conditioning, FlowModel
from trainer.sampling.noise_subspace import block_noise_shape
from trainer.sampling.sde_step import sde_step_with_logprob


def draw_branch_noise(seeds: int, num_branches: int, noise_shape: tuple[int, ...], generator: torch.Generator,
                      antithetic: bool = False) -> torch.Tensor:
    """[seeds, B, *noise_shape] standard normal eps_b; antithetic: eps_{b + B/2} = -eps_b (B must be even)."""
    if not antithetic:
        return torch.randn((seeds, num_branches) + noise_shape, generator=generator)
    if num_branches % 2:
        raise ValueError(f"antithetic branches come in mirrored pairs: the branch count must be even, "
                         f"got {num_branches}")
    half = torch.randn((seeds, num_branches // 2) + noise_shape, generator=generator)
    return torch.cat([half, -half], dim=1)


@dataclass
class BranchedTrajectories:
    """Result of `branched_rollout` for S seeds, |K| branch steps, B branches."""

    anchor_states: torch.Tensor  # [S, anchor_steps + 1, ...] fp32: x_0 .. x_{anchor_steps} of the ODE anchor
    branch_next: torch.Tensor  # [S, |K|, B, ...] fp32: x'_{k,b}, the state after the branch's SDE step
    branch_log_prob: torch.Tensor  # [S, |K|, B] fp32: l_k(x'_{k,b}) under the sampling policy (0 when a = 0)
    branch_final: torch.Tensor  # [S, |K|, B, ...] fp32: each branch integrated by ODE to sigma = 0
    anchor_final: torch.Tensor | None  # [S, ...] the anchor at sigma = 0 when anchor_steps == N, else None
    nfe: int  # forwards spent (CFG counted twice)


def branched_rollout(model: FlowModel, cond: Conditioning, x_init: torch.Tensor, sigmas: torch.Tensor,
                     branch_steps: list[int], num_branches: int, noise_level: float, guidance_scale: float,
                     anchor_steps: int, generator: torch.Generator, max_rows: int = 0,
                     branch_noise: torch.Tensor | None = None, noise_block: int = 1,
                     antithetic: bool = False) -> BranchedTrajectories:
    """Anchor + one-step SDE branches + batched ODE suffixes. cond: one row per seed; x_init: [S, ...] = x_T.
    branch_noise [S, |K|, B, ...] fixes the eps_b of every branch (K sorted; block shape when noise_block > 1);
    otherwise drawn from `generator` at each branch step (in mirrored pairs when `antithetic`)."""
    num_steps = sigmas.shape[0] - 1
    seeds = x_init.shape[0]
    steps = sorted(branch_steps)
    if len(set(steps)) != len(steps) or any(k < 0 or k >= anchor_steps for k in steps):
        raise ValueError(f"branch steps {branch_steps} must be unique and within [0, {anchor_steps})")
    shape = tuple(x_init.shape[1:])
    noise_shape = block_noise_shape(shape, noise_block)
    sigma_max = sigmas[1]
    anchor_states = [x_init.float()]
    branch_next = torch.zeros((seeds, len(steps), num_branches) + shape)
    branch_log_prob = torch.zeros((seeds, len(steps), num_branches))
    # active branch states, flattened as rows (seed, k-slot, b); the row bookkeeping says where each one goes
    active_x = torch.zeros((0,) + shape)
    active_seed = torch.zeros(0, dtype=torch.long)
    active_slot = torch.zeros(0, dtype=torch.long)
    active_branch = torch.zeros(0, dtype=torch.long)
    branch_final = torch.zeros((seeds, len(steps), num_branches) + shape)
    nfe = 0
    anchor_x = x_init.float()
    for i in range(num_steps):
        run_anchor = i < anchor_steps
        if not run_anchor and active_x.shape[0] == 0:
            break
        rows_x = torch.cat([anchor_x, active_x]) if run_anchor else active_x
        rows_seed = torch.cat([torch.arange(seeds), active_seed]) if run_anchor else active_seed
        sigma_rows = sigmas[i].expand(rows_x.shape[0])
        v = velocity_in_chunks(model, rows_x, sigma_rows, cond.index(rows_seed), guidance_scale, max_rows)
        nfe += rows_x.shape[0] * nfe_per_sample(guidance_scale)
        dt = sigmas[i + 1] - sigmas[i]
        if active_x.shape[0]:
            active_x = active_x + dt * v[seeds:] if run_anchor else active_x + dt * v
        if run_anchor:
            anchor_v = v[:seeds]
            if i in steps:
                slot = steps.index(i)
                noise = (branch_noise[:, slot] if branch_noise is not None
                         else draw_branch_noise(seeds, num_branches, noise_shape, generator, antithetic))
                step = sde_step_with_logprob(anchor_x.repeat_interleave(num_branches, 0),
                                             anchor_v.repeat_interleave(num_branches, 0), sigmas[i], sigmas[i + 1],
                                             sigma_max, noise_level, noise=noise.reshape((-1,) + noise_shape),
                                             noise_block=noise_block)
                new_x = step.next_x.reshape((seeds, num_branches) + shape)
                branch_next[:, slot] = new_x
                if step.log_prob is not None:
                    branch_log_prob[:, slot] = step.log_prob.reshape(seeds, num_branches)
                active_x = torch.cat([active_x, new_x.reshape((-1,) + shape)])
                active_seed = torch.cat([active_seed, torch.arange(seeds).repeat_interleave(num_branches)])
                active_slot = torch.cat([active_slot, torch.full((seeds * num_branches,), slot)])
                active_branch = torch.cat([active_branch, torch.arange(num_branches).repeat(seeds)])
            anchor_x = anchor_x + dt * anchor_v
            anchor_states.append(anchor_x)
    branch_final[active_seed, active_slot, active_branch] = active_x
    return BranchedTrajectories(anchor_states=torch.stack(anchor_states, dim=1), branch_next=branch_next,
                                branch_log_prob=branch_log_prob, branch_final=branch_final,
                                anchor_final=anchor_x if anchor_steps == num_steps else None, nfe=nfe)


def concat_trajectories(parts: list[BranchedTrajectories]) -> BranchedTrajectories:
    """Several rollouts' trajectories as one, seeds concatenated in order (same K, B and schedule)."""
    anchors = [p.anchor_final for p in parts]
    return BranchedTrajectories(
        anchor_states=torch.cat([p.anchor_states for p in parts]),
        branch_next=torch.cat([p.branch_next for p in parts]),
        branch_log_prob=torch.cat([p.branch_log_prob for p in parts]),
        branch_final=torch.cat([p.branch_final for p in parts]),
        anchor_final=None if any(a is None for a in anchors) else torch.cat(anchors),
        nfe=sum(p.nfe for p in parts))
