"""The GRPO training loop: rollout -> rewards over the network -> advantages -> LoRA updates -> logs/checkpoints.

One epoch (design.md "The trainer"; algorithm-agnostic through trainer.algorithms.base.Algorithm):
1. between epochs the reward config file is re-read (`reload_if_changed`); a change is logged and used from here on;
2. this rank's prompt groups (trainer.prompt_data) are sampled in chunks of `groups_per_rollout`; each chunk uses
   its own generator seeded by its first group's number in the run, and its images are submitted for scoring at
   once (non-blocking), so the services score chunk i while chunk i+1 samples;
3. the loop waits for every chunk's mixed rewards. A reward service that is down makes the client retry up to its
   deadline; the loop then resubmits the same images until `reward_wait_s` has passed and only then fails the run.
   A step is never scored with a missing reward;
4. `prepare_training` computes advantages with statistics gathered over ranks; the training units (reshuffled for
   each of `inner_epochs` passes, the old log-probs staying those of the rollout) are split into
   optimizer steps of `grad_accumulation` units (loss / units in the step), LoRA gradients are averaged over
   ranks, clipped to `grad_clip`, AdamW steps, and the EMA updates every `ema_interval` steps;
5. rank 0 logs (JSONL + TensorBoard + progress bar), writes image grids, evaluates, and checkpoints.
The run stops after exactly `steps` optimizer steps (the last epoch may use fewer of its units), or earlier after the
epoch in which the model evaluations reach `nfe_budget` (budget-matched comparisons of algorithms; rank-local counts,
equal on every rank).

Determinism: rollout noise depends only on (seed, group number); the minibatch shuffle on (seed, epoch, rank);
global RNGs are reseeded per epoch from (seed, epoch, rank). So a resumed run (checkpoints at epoch ends hold the
LoRA, optimizer, EMA, step, data position, algorithm counters and RNG states) reproduces an uninterrupted one
bitwise on the CPU, and 2 ranks reproduce 1 process with the same global batch up to float reduction order.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainer.algorithms.base import Algorithm, Cost, Rollout
from trainer.checkpoint import (TrainingState, capture_global_rng, latest_valid_checkpoint, load_checkpoint,
                                remove_unfinished_writes, restore_global_rng, save_checkpoint)
from trainer.config import TrainerConfig
from trainer.distributed import (DistContext, all_reduce_max, all_reduce_mean_gradients, barrier,
                                 broadcast_parameters, make_gather)
from trainer.ema import LoraEMA
from trainer.evaluation import evaluate
from trainer.image_grid import save_grid, tile_images
from trainer.models.base import FlowModel
from trainer.prompt_data import PromptRecord, PromptSchedule
from trainer.rollout_merge import concat_rollouts, supports_concat
from trainer.run_logging import RunLogger

log = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    value = 0
    for part in parts:
        value = (value * _SEED_STRIDE + int(part) + 1) % (2 ** 63 - 1)
    return value


class RewardSource(Protocol):
    """What the loop needs from a reward client (trainer.rewards.scoring_pool.RewardClient implements it)."""

    def submit(self, query: Any) -> Any: ...  # returns a handle whose result() gives MixedRewards
    def reload_if_changed(self) -> Any: ...  # ReloadResult: .changed, .description, .error
    def model_info(self) -> dict[str, dict[str, Any]]: ...
    def close(self) -> None: ...


@dataclass
class RunSummary:
    """What a finished run did."""

    steps: int  # optimizer steps done (== config.optim.steps)
    epochs: int  # epochs done
    output_dir: Path  # run directory
    last_checkpoint: Path | None  # checkpoint written at the end (rank 0)


def _unavailable_error_types() -> tuple[type[BaseException], ...]:
    from trainer.rewards.service_client import RewardUnavailableError
    return (RewardUnavailableError,)


def join_mixed_rewards(parts: list[Any]) -> Any:
    """MixedRewards of several chunks as one (rows concatenated; service stats summed)."""
    if len(parts) == 1:
        return parts[0]
    from trainer.rewards.mixer import MixedRewards
    last = parts[-1]
    stats: dict[str, dict[str, float]] = {}
    for part in parts:
        for name, values in part.service_stats.items():
            for key, value in values.items():
                stats.setdefault(name, {}).setdefault(key, 0.0)
                stats[name][key] += float(value)
    return MixedRewards(
        mixed=torch.cat([p.mixed for p in parts]),
        raw={k: torch.cat([p.raw[k] for p in parts]) for k in last.raw},
        contributions={k: torch.cat([p.contributions[k] for p in parts]) for k in last.contributions},
        components={k: {c: torch.cat([p.components[k][c] for p in parts]) for c in v}
                    for k, v in last.components.items()},
        model_info=last.model_info, weights=last.weights, mode=last.mode, service_stats=stats)


class Trainer:
    """Owns the model, optimizer, EMA, algorithm, prompt schedule, reward client and logs of one run."""

    def __init__(self, config: TrainerConfig, model: FlowModel, algorithm: Algorithm, reward_client: RewardSource,
                 train_prompts: list[PromptRecord], eval_prompts: list[PromptRecord] | None = None,
                 ctx: DistContext | None = None, groups_per_rollout: int = 1):
        self.config = config
        self.ctx = ctx or DistContext()
        self.model = model
        self.algo = algorithm
        self.rewards = reward_client
        self.eval_prompts = (eval_prompts or [])[: config.data.eval_num_prompts]
        self.groups_per_rollout = max(1, groups_per_rollout)
        self.output_dir = Path(config.logging.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.gather = make_gather(self.ctx)
        self.params = list(model.trainable_parameters())
        broadcast_parameters(self.params, self.ctx)
        opt = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=opt.lr, betas=(opt.adam_beta1, opt.adam_beta2),
                                           eps=opt.adam_eps, weight_decay=opt.weight_decay)
        self.ema = LoraEMA(model.lora_state_dict(), opt.ema_decay, opt.ema_interval) if opt.ema_decay > 0 else None
        self.schedule = PromptSchedule(train_prompts, opt.seed, config.data.groups_per_epoch,
                                       balance_by=config.data.balance_by)
        self.step = 0  # optimizer steps done
        self.epoch = 0  # epochs done
        self.logger: RunLogger | None = None
        self._progress_reported = 0  # progress-bar position last shown (NFE under a budget, else steps)
        self.last_batch: Any = None  # the latest prepare_training result

    # --------------------------------------------------------------------------------------- checkpoints
    def training_state(self) -> TrainingState:
        algo_state = self.algo.state_dict() if hasattr(self.algo, "state_dict") else {}
        return TrainingState(
            step=self.step, epoch=self.epoch,
            lora={k: v.detach().cpu() for k, v in self.model.lora_state_dict().items()},
            optimizer=self.optimizer.state_dict(), ema=self.ema.state_dict() if self.ema else None,
            data=self.schedule.state_dict(),
            algorithm_tensors={k: v for k, v in algo_state.items() if isinstance(v, torch.Tensor)},
            algorithm_json={"state": {k: v for k, v in algo_state.items() if not isinstance(v, torch.Tensor)},
                            "cost": self.algo.cost.as_dict()},
            rng=capture_global_rng(),
            extra={"config": self.config.to_dict(), "world_size": self.ctx.world_size,
                   "reward_config": _reward_config_dict(self.rewards)})

    def restore(self, state: TrainingState) -> None:
        self.model.load_lora_state_dict({k: v.to(self.model.device) for k, v in state.lora.items()})
        self.optimizer.load_state_dict(state.optimizer)
        if self.ema is not None:
            if state.ema is None:
                raise ValueError("checkpoint has no EMA but this run has --ema-decay > 0")
            self.ema.load_state_dict(state.ema)
        self.schedule.load_state_dict(state.data)
        self.step, self.epoch = state.step, state.epoch
        self.algo.cost = Cost(**state.algorithm_json.get("cost", {}))
        if hasattr(self.algo, "load_state_dict"):
            self.algo.load_state_dict({**state.algorithm_json.get("state", {}), **state.algorithm_tensors})
        restore_global_rng(state.rng)

    def maybe_resume(self) -> Path | None:
        choice = self.config.checkpoint.resume
        if not choice:
            return None
        path = latest_valid_checkpoint(self.checkpoint_dir) if choice == "latest" else Path(choice)
        if path is None:
            self._message(f"--resume latest: no valid checkpoint under {self.checkpoint_dir}; starting fresh")
            return None
        self.restore(load_checkpoint(path))
        return path

    def save(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        return save_checkpoint(self.checkpoint_dir, self.training_state(), save_lora=self.model.save_lora,
                               keep=self.config.checkpoint.keep_checkpoints)

    # ----------------------------------------------------------------------------------------- one epoch
    def _message(self, text: str) -> None:
        if self.logger is not None and self.logger.enabled:
            self.logger.message(text)
        else:
            log.info(text)

    def _reseed_globals(self) -> None:
        seed = derived_seed(self.config.optim.seed, self.epoch, self.ctx.rank, 7)
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)

    def _reload_rewards(self) -> None:
        result = self.rewards.reload_if_changed()
        description = getattr(result, "description", "")
        if description:
            changed = bool(getattr(result, "changed", False))
            self._message(f"reward config {'reloaded' if changed else 'not reloaded'}: {description}")
            if self.logger is not None:
                self.logger.record("reward_config", self.step, {
                    "changed": changed, "description": description, "error": getattr(result, "error", None),
                    "epoch": self.epoch, "config": _reward_config_dict(self.rewards)})

    def _score(self, query: Any) -> Any:
        """Mixed rewards of `query`, resubmitting while the services are down up to reward_wait_s."""
        return self._wait(self.rewards.submit(query), query)

    def _wait(self, handle: Any, query: Any) -> Any:
        deadline = time.monotonic() + self.config.rewards.reward_wait_s
        unavailable = _unavailable_error_types()
        while True:
            try:
                return handle.result()
            except unavailable as err:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"reward service still down after {self.config.rewards.reward_wait_s:.0f} s "
                                       f"of retries; the step was not trained: {err}") from err
                self._message(f"reward unavailable, resubmitting the same images: {err}")
                time.sleep(1.0)
                handle = self.rewards.submit(query)

    def _rollout_chunks(self) -> list[list[tuple[int, PromptRecord]]]:
        groups = self.schedule.epoch_groups(self.ctx.rank, self.ctx.world_size)
        size = self.groups_per_rollout if supports_concat(self.algo) else len(groups)
        return [groups[i:i + size] for i in range(0, len(groups), size)]

    def rollout_and_score(self) -> tuple[Rollout, Any, list[Rollout]]:
        """Sample this rank's groups chunk by chunk, each chunk's scoring overlapping the next chunk's sampling."""
        chunks = self._rollout_chunks()
        rollouts, handles = [], []
        for chunk in chunks:
            generator = torch.Generator().manual_seed(derived_seed(self.config.optim.seed, chunk[0][0]))
            rollout = self.algo.rollout(self.model, [r.prompt for _, r in chunk], [r.metadata for _, r in chunk],
                                        generator)
            rollouts.append(rollout)
            handles.append(self.rewards.submit(rollout.query))
        results = [self._wait(h, ro.query) for h, ro in zip(handles, rollouts)]
        return concat_rollouts(self.algo, rollouts), join_mixed_rewards(results), rollouts

    def train_epoch(self) -> dict[str, Any]:
        """One epoch; returns its metrics (rank-local, rewards and advantages global where gathered)."""
        cfg = self.config
        self._reload_rewards()
        self._reseed_globals()
        t0 = time.perf_counter()
        rollout, mixed, _ = self.rollout_and_score()
        t_rollout = time.perf_counter() - t0
        rewards = mixed.mixed.to(torch.float32)
        batch = self.algo.prepare_training(rollout, rewards, self.gather)
        self.last_batch = batch  # kept for inspection (tests, debugging) until the next epoch
        accum = cfg.optim.grad_accumulation
        planned = num_units = 0
        t1 = time.perf_counter()
        for inner in range(cfg.optim.inner_epochs):
            units = self._units_of_pass(batch, inner)
            steps = min(all_reduce_max(math.ceil(len(units) / accum), self.ctx), cfg.optim.steps - self.step)
            for k in range(steps):
                self._optimizer_step(units[k * accum:(k + 1) * accum])
            planned += steps
            num_units += len(units)
        t_train = time.perf_counter() - t1
        self.epoch += 1
        self.schedule.advance_epoch()
        global_rewards = self.gather(rewards.reshape(-1, 1)).reshape(-1)
        metrics = {"epoch": self.epoch, "optimizer_steps": planned, "units": num_units,
                   "time/rollout_and_reward_s": t_rollout, "time/train_s": t_train,
                   "reward/global_mixed_mean": float(global_rewards.mean()),
                   **mixed.log_metrics(), **{k: v for k, v in getattr(batch, "metrics", {}).items()},
                   "cost": self.algo.cost.as_dict(), "model_info": mixed.model_info}
        if self.logger is not None and self.ctx.is_main:
            self.logger.record("epoch", self.step, metrics)
            self._maybe_images(rollout)
        return metrics

    def _units_of_pass(self, batch: Any, inner: int) -> list[Any]:
        """Training units of inner pass `inner` over this epoch's batch, shuffled by (seed, epoch, rank, pass);
        pass 0 keeps the shuffle of a run without inner epochs."""
        parts = (self.config.optim.seed, self.epoch, self.ctx.rank, 3) + ((inner,) if inner else ())
        return list(self.algo.training_units(batch, torch.Generator().manual_seed(derived_seed(*parts))))

    def _optimizer_step(self, units: list[Any]) -> None:
        cfg = self.config.optim
        sums: dict[str, float] = {}
        loss_total = 0.0
        for unit in units:
            loss, unit_metrics = self.algo.loss(self.model, unit)
            (loss / len(units)).backward()
            loss_total += float(loss.detach())
            for key, value in unit_metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        all_reduce_mean_gradients(self.params, self.ctx)
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.maybe_update(self.model.lora_state_dict(), self.step)
        n = max(len(units), 1)
        values = {"loss": loss_total / n, "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"],
                  "units": len(units), "epoch": self.epoch + 1, **{k: v / n for k, v in sums.items()}}
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"non-finite loss at optimizer step {self.step}: {values['loss']}")
        if self.logger is not None:
            self.logger.record("step", self.step, values)
            position = self._progress_position()
            self.logger.progress(position - self._progress_reported, {"loss": values["loss"], "step": self.step})
            self._progress_reported = position

    def _maybe_images(self, rollout: Rollout) -> None:
        interval = self.config.logging.image_interval
        if interval and (self.epoch % interval == 0 or self.epoch == 1):
            images = rollout.query.images[: min(len(rollout.query.images), 64)]
            path = save_grid(images, self.output_dir / "images" / f"epoch-{self.epoch:05d}.png")
            self.logger.image("samples", self.step, tile_images(images))
            self._message(f"wrote {path}")

    def _maybe_evaluate(self, force: bool = False) -> None:
        interval = self.config.logging.eval_interval
        if not self.eval_prompts or not interval or not (force or self.epoch % interval == 0):
            return
        if self.ctx.is_main:
            algo = self.config.algorithm
            guidance = algo.eval_guidance_scale or algo.guidance_scale or 1.0
            metrics, images = evaluate(self.model, self.eval_prompts, self.rewards, num_steps=algo.eval_num_steps,
                                       shift=algo.shift, guidance_scale=guidance,
                                       seed=derived_seed(self.config.optim.seed, 99), ema=self.ema)
            save_grid(images, self.output_dir / "images" / f"eval-step-{self.step:08d}.png")
            self.logger.record("eval", self.step, {**metrics, "epoch": self.epoch})
            self._message(f"eval at step {self.step}: {metrics}")
        barrier(self.ctx)

    def _progress_position(self) -> int:
        """Where the run stands in the unit its end is set in: model evaluations under --nfe-budget, else steps."""
        return int(self.algo.cost.model_nfe()) if self.config.optim.nfe_budget > 0 else self.step

    def nfe_budget_spent(self) -> bool:
        """True once the algorithm's model evaluations reach --nfe-budget (never when it is 0)."""
        budget = self.config.optim.nfe_budget
        return budget > 0 and self.algo.cost.model_nfe() >= budget

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> RunSummary:
        cfg = self.config
        if self.ctx.is_main:
            removed = remove_unfinished_writes(self.checkpoint_dir)
            if removed:
                log.info("removed %d unfinished checkpoint writes", removed)
        resumed = self.maybe_resume()
        self._progress_reported = self._progress_position()
        by_nfe = cfg.optim.nfe_budget > 0
        self.logger = RunLogger(cfg.logging.output_dir, enabled=self.ctx.is_main,
                                tensorboard=cfg.logging.tensorboard, progress_bar=cfg.logging.progress_bar,
                                progress_total=cfg.optim.nfe_budget if by_nfe else cfg.optim.steps,
                                progress_initial=self._progress_reported, progress_unit="NFE" if by_nfe else "step")
        last: Path | None = None
        try:
            self.logger.record("start", self.step, {
                "resumed_from": str(resumed) if resumed else None, "epoch": self.epoch,
                "world_size": self.ctx.world_size, "algorithm": self.algo.name, "config": cfg.to_dict()})
            if resumed:
                self._message(f"resumed from {resumed} at step {self.step}, epoch {self.epoch}")
            interval = cfg.checkpoint.checkpoint_interval
            while self.step < cfg.optim.steps and not self.nfe_budget_spent():
                self.train_epoch()
                self._maybe_evaluate()
                if self.step < cfg.optim.steps and interval and self.epoch % interval == 0:
                    last = self.save()
                barrier(self.ctx)
            last = self.save()
            if self.ctx.is_main:
                self.model.save_lora(str(self.output_dir / "lora"))
                self.logger.record("end", self.step, {"epoch": self.epoch, "checkpoint": str(last),
                                                      "cost": self.algo.cost.as_dict()})
            barrier(self.ctx)
        finally:
            self.logger.close()
        return RunSummary(steps=self.step, epochs=self.epoch, output_dir=self.output_dir, last_checkpoint=last)


def _reward_config_dict(rewards: Any) -> dict[str, Any] | None:
    """The reward set in use as JSON (names, urls, weights, mixing), when the client exposes it."""
    reward_set = getattr(rewards, "rewards", None)
    config = getattr(reward_set, "config", None)
    if config is None or not hasattr(config, "model_dump"):
        return None
    dumped = config.model_dump(mode="json")
    for spec in dumped.get("rewards", []):
        spec.pop("api_key", None)  # never write secrets into logs or checkpoints
    return dumped
