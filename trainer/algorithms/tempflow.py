"""TempFlow-GRPO (docs/algorithms.md section 3; [TF] paper, [TF-code] scripts/train_sd3_pr.py and the perstep
pipeline).

Rollout per (prompt, seed): one ODE anchor x_0..x_{N-1} (N-1 NFE); at each branch step k in K (default: every
trained step j < int(N * timestep_fraction)) B branches take one P1 SDE step from x_k reusing v(x_k), then finish
by ODE; R[k, b] = reward(image of branch (k, b)): a process reward per step with no intermediate reward model.
Advantages (P4, per column k): seed groups (default, [TF-code] "# seed group": the B branches sharing x_T and k,
process-local) or prompt groups (`group_by="prompt"`: all seeds' branches of a prompt at k, gathered over ranks).
Loss [TF eq. 8]:  L_k = mean_b max(-w_k A r, -w_k A clip(r, 1 +- eps)) + beta * KL_exact,k   (KL not weighted)
with the noise-aware weights w_k = C s_k, s_k = sigma~_k sqrt(|dt_k|), C = 1 / mean_{k in K} s_k (computed:
2.2522 at SD3 a=0.7, N=10, shift 3; the code hard-codes 2.25).

What differs from the official code: no work is repeated. The anchor prefix is computed once per seed, the ODE
suffixes of all branches run batched (trainer.algorithms.branching), and training evaluates the model once per
(seed, k) for all B branches (`deduplicate_training=True`; invariant 9). `deduplicate_training=False` keeps the
official one-row-per-branch pass for the benchmark. Rows (seed, b) whose advantage is 0 at every k are dropped,
as in [FG]/[TF-code]. When K is a subset, C averages over that subset (weights keep mean 1 over trained steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from trainer.advantages import (Gather, clamp_advantages, group_advantages, local_gather, nonzero_advantage_mask,
                                stable_group_key)
from trainer.algorithms.base import Algorithm, Cost, RewardQuery, Rollout
from trainer.algorithms.branch_units import (BranchedBatch, BranchStepUnit, branch_step_unit,
                                             duplicated_transition_unit)
from trainer.algorithms.branching import BranchedTrajectories, branched_rollout, concat_trajectories
from trainer.algorithms.model_calls import nfe_per_sample
from trainer.algorithms.reward_matrix import reward_by_step_metrics
from trainer.algorithms.transition_loss import TransitionLossSettings, TransitionUnit, transition_loss
from trainer.models.base import Conditioning, FlowModel
from trainer.policy_loss import clipped_surrogate
from trainer.rollout_merge import concat_conditionings, concat_queries
from trainer.sampling.kl import kl_to_reference
from trainer.sampling.schedule import num_trained_steps, sd3_sigmas
from trainer.sampling.sde_step import gaussian_log_prob, sde_sigma_tilde, sde_step_mean


@dataclass
class TempFlowConfig:
    """TempFlow-GRPO settings; defaults are [TF-code] config/dgx.py (SD3.5-M, *_pr configs)."""

    num_steps: int = 10  # N sampling steps (count)
    shift: float = 3.0  # SD3 static schedule shift s (unitless)
    guidance_scale: float = 4.5  # CFG scale in sampling and training (>1 costs 2 NFE per sample)
    noise_level: float = 0.7  # a of the branch SDE step (P1) (unitless)
    noise_block: int = 1  # b: branch noise on b x b block-constant images (sampling.noise_subspace); 1 = paper
    antithetic_branches: bool = False  # mirrored branch noise pairs eps, -eps (algorithms.branching); False = paper
    seeds_per_prompt: int = 4  # independent x_T per prompt ([TF-code] num_image_per_prompt) (count)
    num_branches: int = 6  # B branches per (seed, branch step) ([TF-code] num_samples / exploration_k) (count)
    timestep_fraction: float = 0.99  # trainable steps j < int(N * fraction) (9 of 10 at the default)
    branch_steps: tuple[int, ...] | None = None  # K: steps to branch at; None = every trainable step
    group_by: Literal["seed", "prompt"] = "seed"  # advantage group: branches of one seed (code) or of one prompt
    global_std: bool = False  # True: batch std over all rewards of the epoch instead of the group std
    adv_eps: float = 1e-4  # added to the std in the advantage denominator
    adv_clip_max: float = 5.0  # |A| clamp at loss time
    noise_aware_weights: bool = True  # w_k = C s_k on the surrogate; False: w_k = 1 (plain Flow-GRPO weighting)
    clip_range: float = 1e-4  # PPO ratio clip eps
    beta: float = 0.004  # KL coefficient ([TF] GenEval; 0.001 for PickScore); 0 disables the reference forward
    kl_mode: Literal["exact", "flowgrpo_code"] = "exact"  # P3 scale: [TF-code] divides by s_k^2 (exact)
    train_batch_size: int = 2  # (seed, k) pairs per training minibatch, each with all its branches (count)
    deduplicate_training: bool = True  # one model forward per (seed, k) for all branches; False = official path
    rollout_batch_size: int = 0  # max rows per model call while sampling (0 = all at once); memory only

    def __post_init__(self) -> None:
        if self.branch_steps is not None:
            self.branch_steps = tuple(int(k) for k in self.branch_steps)
        if self.num_steps < 2 or self.num_branches < 2 or self.seeds_per_prompt < 1:
            raise ValueError("num_steps >= 2, num_branches >= 2 and seeds_per_prompt >= 1 are required")
        if self.noise_level <= 0:
            raise ValueError("noise_level must be > 0 for training")
        if self.antithetic_branches and self.num_branches % 2:
            raise ValueError(f"antithetic_branches needs an even num_branches (mirrored pairs), "
                             f"got {self.num_branches}")
        if self.group_by not in ("seed", "prompt"):
            raise ValueError(f"group_by must be 'seed' or 'prompt', got {self.group_by!r}")

    def resolved_branch_steps(self) -> list[int]:
        """K as a sorted list, checked against the trainable range [0, min(int(N*fraction), N-1))."""
        trainable = min(num_trained_steps(self.num_steps, self.timestep_fraction), self.num_steps - 1)
        steps = list(range(trainable)) if self.branch_steps is None else sorted(self.branch_steps)
        if not steps or len(set(steps)) != len(steps) or steps[0] < 0 or steps[-1] >= trainable:
            raise ValueError(f"branch_steps {self.branch_steps} must be unique, non-empty, within [0, {trainable})")
        return steps


def noise_aware_weights(sigmas: torch.Tensor, steps: list[int], noise_level: float) -> tuple[torch.Tensor, float]:
    """(w_k for k in steps, C) with w_k = C s_k, s_k = sigma~_k sqrt(|dt_k|), C = 1 / mean_k s_k [TF eq. 8]."""
    idx = torch.tensor(steps)
    sigma, sigma_next = sigmas[idx], sigmas[idx + 1]
    s = sde_sigma_tilde(sigma, sigmas[1], noise_level) * torch.sqrt(sigma - sigma_next)
    constant = float(1.0 / s.mean())
    return constant * s, constant


@dataclass
class TempFlowRollout(Rollout):
    """Anchors and branches of every (prompt, seed)."""

    query: RewardQuery
    trajectories: BranchedTrajectories  # states and log-probs, S = prompts * seeds_per_prompt
    branch_steps: list[int]  # K
    seed_prompt: torch.Tensor  # [S] int64 prompt index of each seed
    prompt_keys: torch.Tensor  # [S] int64 stable hash of each seed's prompt
    prompt_cond: Conditioning  # one row per prompt
    rollout_uid: int  # random id of this rollout, so seed-group keys differ across ranks and epochs


class TempFlowGRPO(Algorithm):
    """TempFlow-GRPO with deduplicated branching and training."""

    name = "tempflow"

    def __init__(self, config: TempFlowConfig):
        self.config = config
        self.cost = Cost()
        self.sigmas = sd3_sigmas(config.num_steps, config.shift)
        self.branch_steps = config.resolved_branch_steps()
        if config.noise_aware_weights:
            self.weights, self.weight_constant = noise_aware_weights(self.sigmas, self.branch_steps,
                                                                     config.noise_level)
        else:
            self.weights, self.weight_constant = torch.ones(len(self.branch_steps)), 1.0
        self.loss_settings = TransitionLossSettings(
            guidance_scale=config.guidance_scale, noise_level=config.noise_level, sigma_max=float(self.sigmas[1]),
            clip_range=config.clip_range, adv_clip_max=config.adv_clip_max, beta=config.beta,
            kl_mode=config.kl_mode, noise_block=config.noise_block)

    @torch.no_grad()
    def rollout(self, model: FlowModel, prompts: list[str], metadata: list[dict | None],
                generator: torch.Generator) -> TempFlowRollout:
        cfg = self.config
        seeds_per_prompt, B, K = cfg.seeds_per_prompt, cfg.num_branches, self.branch_steps
        prompt_cond = model.encode_prompts(prompts, with_negative=cfg.guidance_scale > 1.0)
        seed_prompt = torch.arange(len(prompts)).repeat_interleave(seeds_per_prompt)
        x_init = torch.randn((len(seed_prompt),) + tuple(model.latent_shape()), generator=generator)
        traj = branched_rollout(model, prompt_cond.index(seed_prompt), x_init, self.sigmas, K, B, cfg.noise_level,
                                cfg.guidance_scale, anchor_steps=cfg.num_steps - 1, generator=generator,
                                max_rows=cfg.rollout_batch_size, noise_block=cfg.noise_block,
                                antithetic=cfg.antithetic_branches)
        self.cost.sampling_nfe += traj.nfe
        images = model.decode(traj.branch_final.flatten(0, 2))
        self.cost.reward_images += images.shape[0]
        rollout_uid = int(torch.randint(0, 2**62, (1,), generator=generator))
        prompt_keys = torch.tensor([stable_group_key(p) for p in prompts], dtype=torch.int64)[seed_prompt]
        branch, group, item_prompts, item_metadata = [], [], [], []
        for s, p in enumerate(seed_prompt.tolist()):
            for k in K:
                key = (stable_group_key(prompts[p], rollout_uid, s, k) if cfg.group_by == "seed"
                       else stable_group_key(prompts[p], k))
                for b in range(B):
                    branch.append({"group_id": p, "seed": s % seeds_per_prompt, "branch_step": k, "sample_id": b})
                    group.append(key)
                    item_prompts.append(prompts[p])
                    item_metadata.append(metadata[p])
        query = RewardQuery(images=images, prompts=item_prompts, metadata=item_metadata, branch=branch,
                            group=torch.tensor(group, dtype=torch.int64))
        return TempFlowRollout(query=query, trajectories=traj, branch_steps=K, seed_prompt=seed_prompt,
                               prompt_keys=prompt_keys, prompt_cond=prompt_cond, rollout_uid=rollout_uid)

    def concat_rollouts(self, rollouts: list[TempFlowRollout]) -> TempFlowRollout:
        """Rollouts of several prompt chunks as one (seeds concatenated; the loop's chunked sampling)."""
        offsets = torch.cumsum(torch.tensor([0] + [len(r.prompt_cond) for r in rollouts[:-1]]), 0)
        return TempFlowRollout(
            query=concat_queries([r.query for r in rollouts]),
            trajectories=concat_trajectories([r.trajectories for r in rollouts]),
            branch_steps=rollouts[0].branch_steps,
            seed_prompt=torch.cat([r.seed_prompt + int(o) for r, o in zip(rollouts, offsets)]),
            prompt_keys=torch.cat([r.prompt_keys for r in rollouts]),
            prompt_cond=concat_conditionings([r.prompt_cond for r in rollouts]),
            rollout_uid=rollouts[0].rollout_uid)

    def prepare_training(self, rollout: TempFlowRollout, rewards: torch.Tensor, gather: Gather) -> BranchedBatch:
        cfg = self.config
        S, B, K = len(rollout.seed_prompt), cfg.num_branches, rollout.branch_steps
        reward_grid = rewards.float().reshape(S, len(K), B)
        # P4 matrix: rows (seed, b), columns k
        matrix = reward_grid.permute(0, 2, 1).reshape(S * B, len(K))
        if cfg.group_by == "seed":
            # seed groups are process-local; only the batch-std option needs the other ranks (keys made unique)
            gather_fn = gather if cfg.global_std else local_gather
            keys = torch.tensor([stable_group_key(rollout.rollout_uid, s) for s in range(S)],
                                dtype=torch.int64).repeat_interleave(B)
        else:
            keys, gather_fn = rollout.prompt_keys.repeat_interleave(B), gather
        adv = group_advantages(matrix, keys, gather_fn, global_std=cfg.global_std, eps=cfg.adv_eps)
        row_keep = nonzero_advantage_mask(adv)
        advantages = adv.reshape(S, B, len(K)).permute(0, 2, 1).contiguous()
        keep = row_keep.reshape(S, 1, B).expand(S, len(K), B).contiguous()
        self.cost.trained_samples += int(keep.sum())
        traj = rollout.trajectories
        idx = torch.tensor(K)
        metrics = reward_by_step_metrics(reward_grid, K)
        metrics.update({"advantage/abs_mean": float(adv.abs().mean()),
                        "advantage/kept_fraction": float(row_keep.float().mean()),
                        "tempflow/weight_constant": self.weight_constant})
        return BranchedBatch(anchor_states=traj.anchor_states[:, idx], branch_next=traj.branch_next,
                             old_log_prob=traj.branch_log_prob, advantages=advantages, keep=keep,
                             weights=self.weights.clone(), sigma=self.sigmas[idx], sigma_next=self.sigmas[idx + 1],
                             steps=idx, seed_prompt=rollout.seed_prompt, prompt_cond=rollout.prompt_cond,
                             metrics=metrics)

    def training_units(self, batch: BranchedBatch,
                       generator: torch.Generator) -> Iterator[BranchStepUnit | TransitionUnit]:
        pairs = batch.pairs()
        pairs = pairs[torch.randperm(len(pairs), generator=generator)]
        for start in range(0, len(pairs), self.config.train_batch_size):
            chunk = pairs[start:start + self.config.train_batch_size]
            yield (branch_step_unit(batch, chunk) if self.config.deduplicate_training
                   else duplicated_transition_unit(batch, chunk))

    def loss(self, model: FlowModel, unit: BranchStepUnit | TransitionUnit) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(unit, TransitionUnit):
            return transition_loss(model, unit, self.loss_settings, self.cost)
        return self.deduplicated_loss(model, unit)

    def deduplicated_loss(self, model: FlowModel, unit: BranchStepUnit) -> tuple[torch.Tensor, dict[str, float]]:
        """Same value and gradient as the duplicated pass over the unit's kept branches, one forward per pair."""
        st = self.loss_settings
        pairs, branches = unit.keep.shape
        per_sample = nfe_per_sample(st.guidance_scale)
        v = model.velocity(unit.states, unit.sigma, unit.cond, st.guidance_scale)
        self.cost.training_nfe += pairs * per_sample
        mean, std, sigma_tilde = sde_step_mean(unit.states, v, unit.sigma, unit.sigma_next, st.sigma_max,
                                               st.noise_level, st.noise_block)
        keep = unit.keep.reshape(-1)
        log_prob = gaussian_log_prob(unit.next_states.flatten(0, 1), mean.repeat_interleave(branches, 0),
                                     std.repeat_interleave(branches, 0), st.noise_block)
        advantages = clamp_advantages(unit.advantages.reshape(-1), st.adv_clip_max)
        terms = clipped_surrogate(log_prob[keep], unit.old_log_prob.reshape(-1)[keep], advantages[keep],
                                  st.clip_range, unit.weights.repeat_interleave(branches)[keep])
        policy_loss = terms.per_row.mean()
        metrics = {"policy_loss": float(policy_loss.detach()), "approx_kl": terms.approx_kl,
                   "clip_fraction": terms.clip_fraction, "ratio_mean": float(terms.ratio.mean())}
        loss = policy_loss
        if st.beta > 0:
            with torch.no_grad(), model.reference():
                v_ref = model.velocity(unit.states, unit.sigma, unit.cond, st.guidance_scale)
            self.cost.reference_nfe += pairs * per_sample
            ref_mean, _, _ = sde_step_mean(unit.states, v_ref, unit.sigma, unit.sigma_next, st.sigma_max,
                                           st.noise_level, st.noise_block)
            kl_pair = kl_to_reference(mean, ref_mean, std.reshape(-1), sigma_tilde.reshape(-1), st.kl_mode,
                                      st.noise_block)
            kl = kl_pair.repeat_interleave(branches)[keep].mean()
            loss = loss + st.beta * kl
            metrics["kl"] = float(kl.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics
