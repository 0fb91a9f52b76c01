"""Flow-GRPO and Flow-GRPO (Fixed) (docs/algorithms.md section 2; [FG] scripts/train_sd3.py, config/grpo.py).

Rollout: G samples per prompt, each with its own x_T (or one per prompt with `same_latent`), every one of the N
steps an SDE step (P1, or CPS P2 as the `sde_type="cps"` option) with its log-prob, CFG on both passes.
Advantages (P4): groups = prompt strings of the epoch gathered over ranks; Flow-GRPO divides by the batch std
(`global_std=True`), Fixed by the per-group std; one advantage per sample, broadcast to the trained steps j <
int(N * timestep_fraction); rows with A = 0 are dropped. Training (P5 + P3): recompute l_theta(x_{j+1} | x_j) of the
stored transitions, clipped surrogate + beta * KL to the reference policy (adapter disabled).

Simplifications: the FG code's per-row shuffle of time steps is kept (each minibatch row sits at its own step);
EMA, gradient accumulation and the optimizer belong to the training loop. The KL defaults to the FG code's
`flowgrpo_code` scale (divides by sigma~^2), with beta = 0.04 as in the GenEval config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch

from trainer.advantages import Gather, group_advantages, nonzero_advantage_mask, stable_group_key
from trainer.algorithms.base import Algorithm, Cost, RewardQuery, Rollout, TrainingBatch
from trainer.algorithms.model_calls import nfe_per_sample, velocity_in_chunks
from trainer.algorithms.reward_matrix import reward_summary
from trainer.algorithms.transition_loss import TransitionLossSettings, TransitionUnit, transition_loss
from trainer.models.base import Conditioning, FlowModel
from trainer.sampling.cps_step import cps_step_with_logprob
from trainer.sampling.schedule import num_trained_steps, sd3_sigmas
from trainer.sampling.sde_step import sde_step_with_logprob


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO settings; defaults are [FG] config/grpo.py for SD3.5-M (GenEval)."""

    num_steps: int = 10  # N sampling steps per trajectory (count)
    shift: float = 3.0  # SD3 static schedule shift s (unitless)
    guidance_scale: float = 4.5  # CFG scale in sampling and training (1 = no CFG; >1 costs 2 NFE per sample)
    noise_level: float = 0.7  # a in P1 (or eta in P2 when sde_type="cps") (unitless)
    sde_type: Literal["sde", "cps"] = "sde"  # transition kernel: P1 Flow-GRPO SDE, or P2 CPS
    noise_block: int = 1  # b: P1 noise on b x b block-constant images (sampling.noise_subspace); 1 = paper
    group_size: int = 24  # G samples per prompt (count)
    same_latent: bool = False  # True: all G samples of a prompt share one x_T seeded from a hash of the prompt
    timestep_fraction: float = 0.99  # trained steps j < int(N * fraction) (0.99 at N=10 trains 9 steps)
    global_std: bool = True  # advantage std: True = batch std over all ranks (Flow-GRPO), False = per group (Fixed)
    adv_eps: float = 1e-4  # added to the std in the advantage denominator
    adv_clip_max: float = 5.0  # |A| clamp at loss time
    clip_range: float = 1e-4  # PPO ratio clip eps
    beta: float = 0.04  # KL coefficient (0 disables the reference forward)
    kl_mode: Literal["exact", "flowgrpo_code"] = "flowgrpo_code"  # P3 scale: FG code divides by sigma~^2
    train_batch_size: int = 4  # samples per training minibatch (each at one of its trained steps)
    mask_pad_multiple: int = 1  # pad the kept-sample count to a multiple of this ([FG] num_batches_per_epoch)
    rollout_batch_size: int = 0  # max samples per model call while sampling (0 = all at once); memory only

    def __post_init__(self) -> None:
        if self.num_steps < 2 or self.group_size < 1 or self.train_batch_size < 1:
            raise ValueError("num_steps >= 2, group_size >= 1 and train_batch_size >= 1 are required")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.noise_level <= 0:
            raise ValueError("noise_level must be > 0 for training (a = 0 is the deterministic evaluation sampler)")
        if self.noise_block != 1 and self.sde_type != "sde":
            raise ValueError("noise_block > 1 is defined for the P1 SDE step only (sde_type='sde')")


@dataclass
class FlowGRPORollout(Rollout):
    """G trajectories per prompt with the transitions of the trained steps."""

    query: RewardQuery
    latents: torch.Tensor  # [M, T+1, ...] x_0 .. x_T of each sample (T trained steps)
    log_probs: torch.Tensor  # [M, T] l_old of each trained transition
    prompt_index: torch.Tensor  # [M] int64: which prompt of the epoch each sample belongs to
    group_keys: torch.Tensor  # [M] int64: stable hash of the prompt string (the advantage group)
    prompt_cond: Conditioning  # one row per prompt
    sigmas: torch.Tensor  # [N+1] the schedule


@dataclass
class FlowGRPOBatch(TrainingBatch):
    """Rollout plus advantages and the kept-row mask."""

    rollout: FlowGRPORollout
    advantages: torch.Tensor  # [M, T] (the per-sample advantage broadcast over trained steps)
    keep: torch.Tensor  # [M] bool: rows with a nonzero advantage (plus padding)
    metrics: dict[str, float] = field(default_factory=dict)


class FlowGRPO(Algorithm):
    """Flow-GRPO (batch std) and Flow-GRPO Fixed (per-group std), selected by config.global_std."""

    def __init__(self, config: FlowGRPOConfig, name: str = "flow_grpo"):
        self.config = config
        self.name = name
        self.cost = Cost()
        self.sigmas = sd3_sigmas(config.num_steps, config.shift)
        self.trained_steps = num_trained_steps(config.num_steps, config.timestep_fraction)
        self.loss_settings = TransitionLossSettings(
            guidance_scale=config.guidance_scale, noise_level=config.noise_level, sigma_max=float(self.sigmas[1]),
            clip_range=config.clip_range, adv_clip_max=config.adv_clip_max, beta=config.beta,
            kl_mode=config.kl_mode, sde_type=config.sde_type, noise_block=config.noise_block)

    def _initial_noise(self, model: FlowModel, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        shape = model.latent_shape()
        G = self.config.group_size
        if self.config.same_latent:
            per_prompt = [torch.randn(shape, generator=torch.Generator().manual_seed(stable_group_key(p)))
                          for p in prompts]
            return torch.stack(per_prompt).repeat_interleave(G, 0)
        return torch.randn((len(prompts) * G,) + tuple(shape), generator=generator)

    @torch.no_grad()
    def rollout(self, model: FlowModel, prompts: list[str], metadata: list[dict | None],
                generator: torch.Generator) -> FlowGRPORollout:
        cfg = self.config
        G = cfg.group_size
        prompt_cond = model.encode_prompts(prompts, with_negative=cfg.guidance_scale > 1.0)
        prompt_index = torch.arange(len(prompts)).repeat_interleave(G)
        cond = prompt_cond.index(prompt_index)
        x = self._initial_noise(model, prompts, generator).float()
        rows = x.shape[0]
        latents, log_probs = [x], []
        sigma_max = self.sigmas[1]
        for i in range(cfg.num_steps):
            v = velocity_in_chunks(model, x, self.sigmas[i].expand(rows), cond, cfg.guidance_scale,
                                   cfg.rollout_batch_size)
            if cfg.sde_type == "cps":
                step = cps_step_with_logprob(x, v, self.sigmas[i], self.sigmas[i + 1], cfg.noise_level,
                                             generator=generator)
            else:
                step = sde_step_with_logprob(x, v, self.sigmas[i], self.sigmas[i + 1], sigma_max, cfg.noise_level,
                                             generator=generator, noise_block=cfg.noise_block)
            x = step.next_x
            if i < self.trained_steps:
                latents.append(x)
                log_probs.append(step.log_prob)
        self.cost.sampling_nfe += rows * cfg.num_steps * nfe_per_sample(cfg.guidance_scale)
        self.cost.reward_images += rows
        keys = torch.tensor([stable_group_key(p) for p in prompts], dtype=torch.int64)[prompt_index]
        query = RewardQuery(
            images=model.decode(x), prompts=[prompts[int(p)] for p in prompt_index],
            metadata=[metadata[int(p)] for p in prompt_index],
            branch=[{"group_id": int(p), "seed": 0 if cfg.same_latent else j % G, "branch_step": -1,
                     "sample_id": j % G} for j, p in enumerate(prompt_index.tolist())],
            group=keys.clone())
        return FlowGRPORollout(query=query, latents=torch.stack(latents, 1), log_probs=torch.stack(log_probs, 1),
                               prompt_index=prompt_index, group_keys=keys, prompt_cond=prompt_cond,
                               sigmas=self.sigmas)

    def prepare_training(self, rollout: FlowGRPORollout, rewards: torch.Tensor, gather: Gather) -> FlowGRPOBatch:
        cfg = self.config
        per_sample = group_advantages(rewards.float(), rollout.group_keys, gather, global_std=cfg.global_std,
                                      eps=cfg.adv_eps)
        advantages = per_sample.unsqueeze(1).expand(-1, self.trained_steps).contiguous()
        keep = nonzero_advantage_mask(advantages, cfg.mask_pad_multiple)
        self.cost.trained_samples += int(keep.sum())
        metrics = reward_summary(rewards)
        metrics.update({"advantage/abs_mean": float(per_sample.abs().mean()),
                        "advantage/kept_fraction": float(keep.float().mean())})
        return FlowGRPOBatch(rollout=rollout, advantages=advantages, keep=keep, metrics=metrics)

    def training_units(self, batch: FlowGRPOBatch, generator: torch.Generator) -> Iterator[TransitionUnit]:
        kept = torch.where(batch.keep)[0]
        order = kept[torch.randperm(len(kept), generator=generator)]
        time_perm = torch.stack([torch.randperm(self.trained_steps, generator=generator) for _ in range(len(order))]) \
            if len(order) else torch.zeros((0, self.trained_steps), dtype=torch.long)
        ro = batch.rollout
        for start in range(0, len(order), self.config.train_batch_size):
            rows = order[start:start + self.config.train_batch_size]
            perms = time_perm[start:start + self.config.train_batch_size]
            for j in range(self.trained_steps):
                steps = perms[:, j]
                yield TransitionUnit(
                    states=ro.latents[rows, steps], next_states=ro.latents[rows, steps + 1],
                    old_log_prob=ro.log_probs[rows, steps], advantages=batch.advantages[rows, steps],
                    weights=torch.ones(len(rows)), sigma=ro.sigmas[steps], sigma_next=ro.sigmas[steps + 1],
                    step=steps, cond=ro.prompt_cond.index(ro.prompt_index[rows]))

    def loss(self, model: FlowModel, unit: TransitionUnit) -> tuple[torch.Tensor, dict[str, float]]:
        return transition_loss(model, unit, self.loss_settings, self.cost)
