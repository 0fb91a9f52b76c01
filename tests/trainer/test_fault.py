"""Fault behaviour of real trainer processes: reward hot swap, a reward service killed and restarted, the trainer
killed with SIGKILL and resumed. The reward is the deterministic brightness test scorer served as a real process."""
from __future__ import annotations

import math
import signal
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.support.service_process import free_port
from tests.trainer.test_e2e_harness import (brightness_service, prompt_file, read_metrics, run_trainer,
                                            start_service_on_port, start_trainer, stop_process, tiny_sd3_dir,
                                            trainer_flags, wait_until)
from trainer.checkpoint import latest_valid_checkpoint, list_checkpoints

pytestmark = pytest.mark.slow

__all__ = ["prompt_file", "tiny_sd3_dir"]  # fixtures used here


def write_reward_config(path, rewards: list[dict]) -> None:
    path.write_text(yaml.safe_dump({"mixing": "sum_then_normalize", "rewards": rewards}))


def test_rewriting_the_reward_config_changes_the_mix_from_the_next_epoch(tiny_sd3_dir, prompt_file, tmp_path):
    with brightness_service(tmp_path) as service:
        reward_file = tmp_path / "rewards.yaml"
        write_reward_config(reward_file, [{"name": "bright", "url": service.url, "weight": 1.0}])
        out = tmp_path / "run"
        process = start_trainer(trainer_flags(tiny_sd3_dir, prompt_file, out, steps=4,
                                              reward_config=str(reward_file)), tmp_path / "trainer.log")
        try:
            wait_until(lambda: read_metrics(out, "epoch"), process, tmp_path / "trainer.log", what="first epoch")
            write_reward_config(reward_file, [{"name": "bright", "url": service.url, "weight": 0.5},
                                              {"name": "bright_again", "url": service.url, "weight": 2.0}])
            assert process.wait(300) == 0, (tmp_path / "trainer.log").read_text()[-4000:]
        finally:
            stop_process(process)
    records = read_metrics(out)
    swap = next(i for i, r in enumerate(records) if r["kind"] == "reward_config")
    assert records[swap]["changed"] is True
    assert "added reward 'bright_again'" in records[swap]["description"]
    before = [r for r in records[:swap] if r["kind"] == "epoch"]
    after = [r for r in records[swap:] if r["kind"] == "epoch"]
    assert before and after, "the swap must land between epochs of the run"
    assert all("reward/bright_again/raw_mean" not in r and r["reward/bright/weight"] == 1.0 for r in before)
    for epoch in after:
        assert epoch["reward/bright/weight"] == 0.5 and epoch["reward/bright_again/weight"] == 2.0
        expected = 0.5 * epoch["reward/bright/raw_mean"] + 2.0 * epoch["reward/bright_again/raw_mean"]
        assert epoch["reward/mixed_mean"] == pytest.approx(expected, rel=1e-9)


def test_killed_reward_service_restarted_on_its_port_loses_no_step(tiny_sd3_dir, prompt_file, tmp_path):
    port = free_port()
    service = start_service_on_port("tests.support.test_scorers", port, [], tmp_path / "service-1.log")
    out = tmp_path / "run"
    log = tmp_path / "trainer.log"
    process = start_trainer(trainer_flags(tiny_sd3_dir, prompt_file, out, steps=4,
                                          reward_url=f"name=bright,url={service.url}"), log)
    try:
        wait_until(lambda: read_metrics(out, "step"), process, log, what="the first optimizer step")
        service.process.send_signal(signal.SIGKILL)
        service.process.wait()
        time.sleep(2.0)  # the trainer's next epoch meets a dead service
        service = start_service_on_port("tests.support.test_scorers", port, [], tmp_path / "service-2.log")
        assert process.wait(300) == 0, log.read_text()[-4000:]
    finally:
        stop_process(process)
        stop_process(service.process)
    assert [r["step"] for r in read_metrics(out, "step")] == [1, 2, 3, 4]
    epochs = read_metrics(out, "epoch")
    assert len(epochs) == 4
    assert all(math.isfinite(e["reward/bright/raw_mean"]) and math.isfinite(e["reward/mixed_mean"]) for e in epochs)
    assert sum(e["reward/bright/retries"] for e in epochs) > 0 or "reward unavailable" in log.read_text(), \
        "the outage was never seen by the trainer, so the test did not exercise it"


def test_trainer_killed_and_resumed_ends_bitwise_equal_to_an_uninterrupted_run(tiny_sd3_dir, prompt_file, tmp_path):
    with brightness_service(tmp_path) as service:
        flags = dict(steps=4, reward_url=f"name=bright,url={service.url}", ema_interval=2)
        run_trainer(trainer_flags(tiny_sd3_dir, prompt_file, tmp_path / "straight", **flags),
                    tmp_path / "straight.log")

        out = tmp_path / "interrupted"
        log = tmp_path / "interrupted.log"
        process = start_trainer(trainer_flags(tiny_sd3_dir, prompt_file, out, **flags), log)
        try:
            wait_until(lambda: len(list_checkpoints(out / "checkpoints")) >= 2, process, log,
                       what="the second checkpoint")
            process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            stop_process(process)
        assert max(r["step"] for r in read_metrics(out, "step")) < 4, "the kill came after the run finished"
        run_trainer(trainer_flags(tiny_sd3_dir, prompt_file, out, resume="latest", **flags), log)

    starts = read_metrics(out, "start")
    assert starts[-1]["resumed_from"] is not None
    straight = latest_valid_checkpoint(tmp_path / "straight" / "checkpoints")
    resumed = latest_valid_checkpoint(out / "checkpoints")
    assert straight.name == resumed.name == "step-00000004"
    for name in ("lora.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    final_a = load_file(str(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors"))
    final_b = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
