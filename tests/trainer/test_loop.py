"""The training loop in-process (tiny SD3): exact step budget, reward outages that fail loudly, EMA in evaluation."""
from __future__ import annotations

import pytest
import torch
import yaml

from tests.support.service_process import free_port
from tests.support.test_scorers import BrightnessScorer
from tests.trainer.test_e2e_harness import PROMPTS, read_metrics, tiny_sd3_dir, trainer_flags
from trainer.__main__ import build_algorithm, build_model, build_reward_client
from trainer.config import config_from_args
from trainer.distributed import DistContext
from trainer.local_rewards import LocalRewardClient
from trainer.loop import Trainer
from trainer.prompt_data import PromptRecord

__all__ = ["tiny_sd3_dir"]  # fixture used here


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(tiny_sd3_dir, tmp_path, rewards=None, **overrides) -> Trainer:
    flags = trainer_flags(tiny_sd3_dir, tmp_path / "unused.txt", tmp_path / "run", **overrides)
    config, _ = config_from_args(flags + ["--reward-url", "http://127.0.0.1:1"] if "reward_url" not in overrides
                                 and "reward_config" not in overrides else flags)
    model = build_model(config, DistContext())
    rewards = rewards or LocalRewardClient({"bright": (BrightnessScorer(), 1.0)})
    prompts = [PromptRecord(p, None) for p in PROMPTS]
    return Trainer(config, model, build_algorithm(config), rewards, prompts, prompts[:2], ctx=DistContext())


def test_the_run_stops_exactly_at_the_planned_optimizer_steps_even_mid_epoch(tiny_sd3_dir, tmp_path):
    # 2 groups x 4 images, 3 trained steps, batches of 4 rows: 6 units per epoch, 2 per step -> 3 steps per epoch
    trainer = make_trainer(tiny_sd3_dir, tmp_path, steps=4, grad_accumulation=2, num_steps=4, image_interval=0)
    summary = trainer.run()
    assert (summary.steps, summary.epochs) == (4, 2)
    assert [r["optimizer_steps"] for r in read_metrics(tmp_path / "run", "epoch")] == [3, 1]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "step")] == [1, 2, 3, 4]


def test_a_reward_that_stays_down_fails_the_step_instead_of_scoring_it(tiny_sd3_dir, tmp_path):
    reward_file = tmp_path / "rewards.yaml"
    reward_file.write_text(yaml.safe_dump({
        "rewards": [{"name": "gone", "url": f"http://127.0.0.1:{free_port()}"}],
        "retry": {"deadline_s": 0.5, "initial_backoff_s": 0.05, "connect_timeout_s": 0.2}}))
    trainer = make_trainer(tiny_sd3_dir, tmp_path, steps=1, reward_config=str(reward_file), reward_wait_s=1)
    config = trainer.config
    trainer.rewards = build_reward_client(config, seed=0)
    try:
        with pytest.raises(RuntimeError, match="not trained"):
            trainer.run()
    finally:
        trainer.rewards.close()
    assert read_metrics(tmp_path / "run", "step") == []


def test_evaluation_uses_the_ema_weights_and_leaves_the_trained_weights_untouched(tiny_sd3_dir, tmp_path):
    trainer = make_trainer(tiny_sd3_dir, tmp_path, steps=2, ema_interval=1, ema_decay=0.5, eval_interval=1,
                           eval_num_steps=3, image_interval=0)
    trainer.run()
    trained = {k: v.clone() for k, v in trainer.model.lora_state_dict().items()}
    from trainer.evaluation import sample_deterministic
    with trainer.ema.swapped_in(trainer.model):
        assert any(not torch.equal(trainer.model.lora_state_dict()[k], trained[k]) for k in trained)
        ema_images = sample_deterministic(trainer.model, PROMPTS[:2], 3, 3.0, 1.0, seed=1)
    assert all(torch.equal(trainer.model.lora_state_dict()[k], trained[k]) for k in trained)
    assert ema_images.dtype == torch.uint8 and ema_images.shape[0] == 2
    evals = read_metrics(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [1, 2] and all("reward/bright/raw_mean" in e for e in evals)


def test_an_nfe_budget_stops_the_run_after_the_epoch_that_reaches_it(tiny_sd3_dir, tmp_path):
    # an epoch (2 groups x 4 images, 4 steps, no CFG) costs 32 sampling forwards plus up to 24 trained + 24 reference
    trainer = make_trainer(tiny_sd3_dir, tmp_path, steps=100, num_steps=4, image_interval=0, nfe_budget=100)
    summary = trainer.run()
    epochs = read_metrics(tmp_path / "run", "epoch")
    spent = [e["cost"]["sampling_nfe"] + e["cost"]["training_nfe"] + e["cost"]["reference_nfe"] for e in epochs]
    assert summary.steps < 100 and summary.epochs == len(epochs)
    assert len(epochs) >= 2 and spent[-1] >= 100 and all(s < 100 for s in spent[:-1])


def test_under_an_nfe_budget_the_progress_bar_counts_model_evaluations_to_the_budget(tiny_sd3_dir, tmp_path,
                                                                                         capsys):
    trainer = make_trainer(tiny_sd3_dir, tmp_path, steps=100, num_steps=4, image_interval=0, nfe_budget=100)
    trainer.config.logging.progress_bar = True
    trainer.run()
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("train:")]
    assert any("/100 " in bar for bar in bars)  # the budget is the total (the last epoch may run past it)
    assert bars[-1].startswith(f"train: {trainer.algo.cost.model_nfe()}") and "NFE" in bars[-1]


def test_inner_epochs_reuse_the_rollouts_with_their_old_log_probs_and_the_first_pass_is_unchanged(tiny_sd3_dir,
                                                                                                  tmp_path):
    # 6 units per epoch, 2 per step: 3 optimizer steps per pass; 2 passes -> 6 steps from one rollout
    once = make_trainer(tiny_sd3_dir, tmp_path / "once", steps=3, grad_accumulation=2, num_steps=4, image_interval=0)
    once.run()
    twice = make_trainer(tiny_sd3_dir, tmp_path / "twice", steps=6, grad_accumulation=2, num_steps=4,
                         image_interval=0, inner_epochs=2)
    summary = twice.run()
    assert (summary.steps, summary.epochs) == (6, 1)
    first, reused = read_metrics(tmp_path / "once" / "run", "step"), read_metrics(tmp_path / "twice" / "run", "step")
    assert [r["loss"] for r in reused[:3]] == [r["loss"] for r in first]
    assert reused[0]["ratio_mean"] == 1.0  # the first step of pass 1 is still on-policy
    assert all(r["approx_kl"] > 0 for r in reused[3:])  # pass 2: the policy moved away from the rollout's


def test_inner_epochs_must_be_at_least_one(tiny_sd3_dir, tmp_path):
    with pytest.raises(ValueError, match="--inner-epochs"):
        make_trainer(tiny_sd3_dir, tmp_path, inner_epochs=0).config.validate()
