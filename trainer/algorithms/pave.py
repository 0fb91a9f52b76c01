"""Pave-GRPO (docs/algorithms.md section 4; [PAVE-code] Bujiazi/GRPO-Series src/method_pavegrpo.py,
utils/utilities.py, scripts/train_pavegrpo.sh). The paper body is unavailable; this follows the official code.

Rollout (per prompt, one seed by default): ODE anchor over all N steps (N NFE, anchor image scored and only logged);
at each k in K (default 0,2,4,6 of N=16, shifted uniform schedule) G branches x'_{k,g} = mu_k + s_k eps_g from the
anchor's (x_k, v_k) (P1, a = sde_eta = 0.8, no new NFE), each finished by ODE. Advantages per (seed, k) over the G
branches: A = clip((R - mean)/(std_ddof1 + 1e-8), +-5).

Loss, "paved transitions" (x_k detached; intermediate states NOT detached; Delta = sigma_{k+1} - sigma_k):
    v1 = v(x_k, sigma_k);  T_1: mu = P1mean(x_k, v1, sigma_k, Delta), var = s(sigma_k)^2 |Delta|
    for n in S: delta = Delta/n, z_0 = x_k, tau_j = sigma_k + j delta,
                z_{j+1} = z_j + delta v(z_j, tau_j) for j = 0..n-2   (v(z_0, tau_0) = v1 reused)
                T_n: mu = P1mean(z_{n-1}, v(z_{n-1}, tau_{n-1}), tau_{n-1}, delta), var = s(tau_{n-1})^2 |delta|
    l_T(x') = -mean_d (x' - mu_T)^2 / (2 var_T)                      (constants dropped)
    loss_k  = mean_g[-A exp(l_T1 - sg l_T1)] + (1/|S|) sum_n mean_g[-A exp(l_Tn - sg l_Tn)]
No PPO clip, old-policy ratio, KL or reference: one on-policy update whose ratio is identically 1.
Variant `pave_avgvel` [D]: T_n's mean is P1mean(x_k, u_n, sigma_k, Delta) with u_n = (1/n) sum_j v(z_j, tau_j)
and var = s_k^2 |Delta| (the sampling variance); it equals T_1 for n = 1 or a constant velocity along the path.

Units are (seed, k) pairs (batch 1 by default as in the code); the unit loss is loss_k, so averaging over the |K|
units of a prompt gives the code's sum_k loss_k/|K| for its one optimizer step per prompt. n = 1 is accepted by
`paved_transition` (it gives T_1, invariant 10) but not in the config's decomposition set, as in the code.
`detach_substeps` exists only to show the gradient flows through the sub-path (invariant 13).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from trainer.advantages import Gather, clamp_advantages, group_advantages, local_gather, stable_group_key
from trainer.algorithms.base import Algorithm, Cost, RewardQuery, Rollout
from trainer.algorithms.branch_units import BranchedBatch, BranchStepUnit, branch_step_unit
from trainer.algorithms.branching import BranchedTrajectories, branched_rollout, concat_trajectories
from trainer.algorithms.model_calls import nfe_per_sample
from trainer.algorithms.reward_matrix import reward_by_step_metrics
from trainer.models.base import Conditioning, FlowModel
from trainer.rollout_merge import concat_conditionings, concat_queries
from trainer.sampling.noise_subspace import block_coordinates
from trainer.sampling.schedule import uniform_shifted_sigmas
from trainer.sampling.sde_step import sde_step_mean


@dataclass
class PaveConfig:
    """Pave-GRPO settings; defaults are [PAVE-code] scripts/train_pavegrpo.sh (FLUX.1-dev, HPSv3)."""

    num_steps: int = 16  # N sampling steps (count)
    shift: float = 3.0  # shift applied to the uniform u_i = 1 - i/N schedule (unitless)
    guidance_scale: float = 1.0  # CFG scale; the code uses FLUX's guidance embedding, i.e. no CFG forward (1.0)
    noise_level: float = 0.8  # a of the branch SDE step ([PAVE-code] sde_eta) (unitless)
    noise_block: int = 1  # b: branch noise on b x b block-constant images (sampling.noise_subspace); 1 = paper
    antithetic_branches: bool = False  # mirrored branch noise pairs eps, -eps (algorithms.branching); False = paper
    seeds_per_prompt: int = 1  # independent anchors per prompt (count)
    num_branches: int = 12  # G branches per branch step (count)
    branch_steps: tuple[int, ...] = (0, 2, 4, 6)  # K ([PAVE-code] sde_stepidx), indices into the N steps
    decomposition: tuple[int, ...] = (2, 3)  # S ([PAVE-code] seg_list): sub-step counts n > 1, unique
    variant: Literal["pave_official", "pave_avgvel"] = "pave_official"  # paved-transition form (see docstring)
    adv_eps: float = 1e-8  # added to the (ddof=1) std in the advantage denominator
    adv_clip_max: float = 5.0  # advantages clipped to +-this when computed
    train_batch_size: int = 1  # (seed, k) pairs per training unit (count)
    detach_substeps: bool = False  # ablation for tests only: cut the gradient through the Euler sub-path
    rollout_batch_size: int = 0  # max rows per model call while sampling (0 = all at once); memory only

    def __post_init__(self) -> None:
        self.branch_steps = tuple(int(k) for k in self.branch_steps)
        self.decomposition = tuple(int(n) for n in self.decomposition)
        if len(set(self.decomposition)) != len(self.decomposition) or any(n <= 1 for n in self.decomposition):
            raise ValueError(f"decomposition {self.decomposition} must hold unique integers > 1")
        if (not self.branch_steps or len(set(self.branch_steps)) != len(self.branch_steps)
                or min(self.branch_steps) < 0 or max(self.branch_steps) >= self.num_steps):
            raise ValueError(f"branch_steps {self.branch_steps} must be unique and within [0, {self.num_steps})")
        if self.variant not in ("pave_official", "pave_avgvel"):
            raise ValueError(f"variant must be pave_official or pave_avgvel, got {self.variant!r}")
        if self.num_branches < 2 or self.noise_level <= 0:
            raise ValueError("num_branches >= 2 and noise_level > 0 are required")
        if self.antithetic_branches and self.num_branches % 2:
            raise ValueError(f"antithetic_branches needs an even num_branches (mirrored pairs), "
                             f"got {self.num_branches}")


@dataclass
class PavedTransition:
    """A Gaussian transition model of x_k -> x_{k+1} built along a sub-path."""

    mean: torch.Tensor  # [P, ...] carries the graph through every sub-step velocity
    var: torch.Tensor  # [P, 1, ...] per-element variance
    sub_sigmas: list[torch.Tensor]  # the times tau_j ([P] each) the velocity was evaluated at, in order
    noise_block: int = 1  # b of the branch noise: the density is over the b x b block coordinates


def paved_transition(model: FlowModel, x: torch.Tensor, v1: torch.Tensor, sigma: torch.Tensor,
                     sigma_next: torch.Tensor, sigma_max: float, noise_level: float, cond: Conditioning,
                     guidance_scale: float, n: int, variant: str = "pave_official",
                     detach_substeps: bool = False, noise_block: int = 1) -> PavedTransition:
    """T_n for a batch of anchor states x [P, ...] at sigma [P], given v1 = v(x, sigma) (n - 1 new evaluations)."""
    delta = (sigma_next - sigma) / n
    shape = (-1,) + (1,) * (x.ndim - 1)
    z, v, tau = x, v1, sigma
    velocities, times = [v1], [sigma]
    for j in range(1, n):
        z = z + delta.reshape(shape) * v
        if detach_substeps:
            z = z.detach()
        tau = sigma + j * delta
        v = model.velocity(z, tau, cond, guidance_scale).float()
        velocities.append(v)
        times.append(tau)
    if variant == "pave_avgvel":
        mean_velocity = torch.stack(velocities).mean(dim=0)
        mean, std, _ = sde_step_mean(x, mean_velocity, sigma, sigma_next, sigma_max, noise_level, noise_block)
    else:
        mean, std, _ = sde_step_mean(z, v, tau, sigma_next, sigma_max, noise_level, noise_block)
    return PavedTransition(mean=mean, var=std**2, sub_sigmas=times, noise_block=noise_block)


def paved_log_prob(next_states: torch.Tensor, transition: PavedTransition) -> torch.Tensor:
    """l_T(x') = -mean_d (x' - mu_T)^2 / (2 var_T) for x' [P, G, ...]; returns [P, G] (constants dropped)."""
    diff = block_coordinates(next_states.detach().float() - transition.mean.unsqueeze(1), transition.noise_block)
    elementwise = -(diff**2) / (2 * transition.var.unsqueeze(1))
    return elementwise.flatten(2).mean(dim=2)


def reinforce_term(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """mean_g[-A exp(l - sg l)] per pair ([P]): value -mean A, gradient -mean A grad l."""
    return (-advantages * torch.exp(log_prob - log_prob.detach())).mean(dim=1)


@dataclass
class PaveRollout(Rollout):
    """Anchors (scored, logged) and branch groups."""

    query: RewardQuery
    trajectories: BranchedTrajectories  # S = prompts * seeds_per_prompt
    seed_prompt: torch.Tensor  # [S] int64
    prompt_cond: Conditioning  # one row per prompt


class PaveGRPO(Algorithm):
    """Pave-GRPO, official paved transitions (default) or the average-velocity variant."""

    name = "pave"

    def __init__(self, config: PaveConfig):
        self.config = config
        self.cost = Cost()
        self.sigmas = uniform_shifted_sigmas(config.num_steps, config.shift)
        self.branch_steps = sorted(config.branch_steps)

    @torch.no_grad()
    def rollout(self, model: FlowModel, prompts: list[str], metadata: list[dict | None],
                generator: torch.Generator) -> PaveRollout:
        cfg = self.config
        G, K = cfg.num_branches, self.branch_steps
        prompt_cond = model.encode_prompts(prompts, with_negative=cfg.guidance_scale > 1.0)
        seed_prompt = torch.arange(len(prompts)).repeat_interleave(cfg.seeds_per_prompt)
        x_init = torch.randn((len(seed_prompt),) + tuple(model.latent_shape()), generator=generator)
        traj = branched_rollout(model, prompt_cond.index(seed_prompt), x_init, self.sigmas, K, G, cfg.noise_level,
                                cfg.guidance_scale, anchor_steps=cfg.num_steps, generator=generator,
                                max_rows=cfg.rollout_batch_size, noise_block=cfg.noise_block,
                                antithetic=cfg.antithetic_branches)
        self.cost.sampling_nfe += traj.nfe
        rollout_uid = int(torch.randint(0, 2**62, (1,), generator=generator))
        # image order, per seed: its anchor, then its branches (k-major, then g)
        per_seed = torch.cat([traj.anchor_final.unsqueeze(1), traj.branch_final.flatten(1, 2)], dim=1)
        images = model.decode(per_seed.flatten(0, 1))
        self.cost.reward_images += images.shape[0]
        branch, group, item_prompt = [], [], []
        for s, p in enumerate(seed_prompt.tolist()):
            seed = s % cfg.seeds_per_prompt
            branch.append({"group_id": p, "seed": seed, "branch_step": -1, "sample_id": 0})
            group.append(stable_group_key(prompts[p], rollout_uid, s, "anchor"))  # alone: only logged
            for k in K:
                branch += [{"group_id": p, "seed": seed, "branch_step": k, "sample_id": g} for g in range(G)]
                group += [stable_group_key(prompts[p], rollout_uid, s, k)] * G
            item_prompt += [p] * (1 + len(K) * G)
        query = RewardQuery(images=images, prompts=[prompts[p] for p in item_prompt],
                            metadata=[metadata[p] for p in item_prompt], branch=branch,
                            group=torch.tensor(group, dtype=torch.int64))
        return PaveRollout(query=query, trajectories=traj, seed_prompt=seed_prompt, prompt_cond=prompt_cond)

    def concat_rollouts(self, rollouts: list[PaveRollout]) -> PaveRollout:
        """Rollouts of several prompt chunks as one (seeds concatenated; the loop's chunked sampling)."""
        offsets = torch.cumsum(torch.tensor([0] + [len(r.prompt_cond) for r in rollouts[:-1]]), 0)
        return PaveRollout(
            query=concat_queries([r.query for r in rollouts]),
            trajectories=concat_trajectories([r.trajectories for r in rollouts]),
            seed_prompt=torch.cat([r.seed_prompt + int(o) for r, o in zip(rollouts, offsets)]),
            prompt_cond=concat_conditionings([r.prompt_cond for r in rollouts]))

    def prepare_training(self, rollout: PaveRollout, rewards: torch.Tensor, gather: Gather) -> BranchedBatch:
        """Seed groups are local, so `gather` is not needed (the code normalizes per prompt per GPU)."""
        cfg = self.config
        S, G, K = len(rollout.seed_prompt), cfg.num_branches, self.branch_steps
        rewards = rewards.float()
        per_seed = rewards.reshape(S, 1 + len(K) * G)
        anchor_rewards, reward_grid = per_seed[:, 0], per_seed[:, 1:].reshape(S, len(K), G)
        matrix = reward_grid.permute(0, 2, 1).reshape(S * G, len(K))
        adv = group_advantages(matrix, torch.arange(S).repeat_interleave(G), local_gather, global_std=False,
                               eps=cfg.adv_eps, ddof=1)
        advantages = clamp_advantages(adv, cfg.adv_clip_max).reshape(S, G, len(K)).permute(0, 2, 1).contiguous()
        keep = torch.ones_like(advantages, dtype=torch.bool)
        self.cost.trained_samples += int(keep.sum())
        traj = rollout.trajectories
        idx = torch.tensor(K)
        metrics = reward_by_step_metrics(reward_grid, K)
        metrics.update({"reward/anchor_mean": float(anchor_rewards.mean()),
                        "advantage/abs_mean": float(advantages.abs().mean())})
        return BranchedBatch(anchor_states=traj.anchor_states[:, idx], branch_next=traj.branch_next,
                             old_log_prob=traj.branch_log_prob, advantages=advantages, keep=keep,
                             weights=torch.ones(len(K)), sigma=self.sigmas[idx], sigma_next=self.sigmas[idx + 1],
                             steps=idx, seed_prompt=rollout.seed_prompt, prompt_cond=rollout.prompt_cond,
                             metrics=metrics)

    def training_units(self, batch: BranchedBatch, generator: torch.Generator) -> Iterator[BranchStepUnit]:
        """(seed, k) pairs in order (the code loops over k per prompt); `generator` is unused."""
        pairs = batch.pairs()
        for start in range(0, len(pairs), self.config.train_batch_size):
            yield branch_step_unit(batch, pairs[start:start + self.config.train_batch_size])

    def transitions(self, model: FlowModel, unit: BranchStepUnit,
                    decomposition: tuple[int, ...] | None = None) -> tuple[PavedTransition, list[PavedTransition]]:
        """T_1 and the T_n for n in the decomposition set (the config's unless given), with graphs attached."""
        cfg = self.config
        decomposition = cfg.decomposition if decomposition is None else decomposition
        sigma_max = float(self.sigmas[1])
        x = unit.states.detach()
        v1 = model.velocity(x, unit.sigma, unit.cond, cfg.guidance_scale).float()
        coarse = paved_transition(model, x, v1, unit.sigma, unit.sigma_next, sigma_max, cfg.noise_level, unit.cond,
                                  cfg.guidance_scale, 1, noise_block=cfg.noise_block)
        paved = [paved_transition(model, x, v1, unit.sigma, unit.sigma_next, sigma_max, cfg.noise_level, unit.cond,
                                  cfg.guidance_scale, n, cfg.variant, cfg.detach_substeps, cfg.noise_block)
                 for n in decomposition]
        evaluations = 1 + sum(n - 1 for n in decomposition)
        self.cost.training_nfe += unit.states.shape[0] * evaluations * nfe_per_sample(cfg.guidance_scale)
        return coarse, paved

    def loss(self, model: FlowModel, unit: BranchStepUnit) -> tuple[torch.Tensor, dict[str, float]]:
        coarse, paved = self.transitions(model, unit)
        advantages = unit.advantages
        coarse_term = reinforce_term(paved_log_prob(unit.next_states, coarse), advantages)
        per_pair = coarse_term
        metrics = {"pave/coarse_term": float(coarse_term.mean().detach())}
        if paved:
            paved_terms = torch.stack([reinforce_term(paved_log_prob(unit.next_states, t), advantages)
                                       for t in paved])
            per_pair = per_pair + paved_terms.mean(dim=0)
            metrics["pave/paved_term"] = float(paved_terms.mean().detach())
        loss = per_pair.mean()
        metrics["loss"] = float(loss.detach())
        return loss, metrics
