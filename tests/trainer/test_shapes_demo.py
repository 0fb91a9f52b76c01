"""The shapes-world demo command, run for real at a tiny budget: a GenEval service process, a trainer process over
HTTP, before/after evaluations, grids, the reward-curve plot and the summary."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from services.common.launcher import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_demo_trains_over_http_and_writes_before_after_and_the_reward_curve(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "trainer.shapes_world.demo", "--out-dir", str(out), "--nfe-budget", "2000",
               "--eval-samples", "1", "--threads", "1", "--",
               "--groups-per-epoch", "2", "--eval-interval", "1", "--eval-num-prompts", "4", "--no-progress-bar"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    tags = {"single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"}
    assert set(summary["heldout_strict_before"]) == tags == set(summary["heldout_strict_after"])
    assert len(summary["reward_curve"]) >= 2 and summary["reward_curve"][-1]["nfe"] >= 2000
    assert len(summary["heldout_reward_curve"]) == len(summary["reward_curve"])
    for name in ("before.png", "after.png", "reward_curve.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    assert (out / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "held-out GenEval strict accuracy" in result.stdout and "overall" in result.stdout


def test_the_demo_refuses_to_mix_its_run_into_an_earlier_one(tmp_path):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "metrics.jsonl").write_text("{}\n")
    result = subprocess.run([sys.executable, "-m", "trainer.shapes_world.demo", "--out-dir", str(tmp_path / "demo")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds an earlier run" in result.stderr


def test_the_demo_names_the_four_geneval_rewards_it_can_train_on():
    from trainer.shapes_world.demo import config_from_args

    for reward in ("strict", "partial", "graded", "confidence"):
        assert config_from_args(["--reward", reward]).reward == reward
    with pytest.raises(ValueError, match="'confidence' or 'graded' or 'partial' or 'strict' or a mix .*, got 'clip'"):
        config_from_args(["--reward", "clip"])


def test_a_reward_mix_trains_on_one_trainer_reward_per_component_of_one_service():
    from trainer.shapes_world.demo import config_from_args, trainer_command

    config = config_from_args(["--reward", "strict=0.5,confidence=0.25"])
    assert config.reward_weights() == {"strict": 0.5, "confidence": 0.25}
    assert config.service_reward() == "confidence"  # the service only announces a shaped component it serves
    command = trainer_command(config, "http://127.0.0.1:9", REPO_ROOT / "run")
    specs = [command[i + 1] for i, flag in enumerate(command) if flag == "--reward-url"]
    assert specs == ["name=geneval-strict,url=http://127.0.0.1:9,component=strict,weight=0.5",
                     "name=geneval-confidence,url=http://127.0.0.1:9,component=confidence,weight=0.25"]
    for bad in ("strict=0.5,clip=0.5", "strict=half", "graded=0.5,confidence=0.5", "strict=1,strict=1"):
        with pytest.raises(ValueError, match="--reward"):
            config_from_args(["--reward", bad])


def test_a_terminated_demo_stops_its_reward_service_and_its_trainer(tmp_path):
    import re
    import signal
    import time

    import httpx

    command = [sys.executable, "-u", "-m", "trainer.shapes_world.demo", "--out-dir", str(tmp_path / "demo"),
               "--nfe-budget", "1000000", "--eval-samples", "1", "--threads", "1", "--", "--groups-per-epoch", "2",
               "--no-progress-bar"]
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"python -m trainer|-m trainer ", log_path.read_text()) and time.monotonic() < deadline:
            assert demo.poll() is None, log_path.read_text()
            time.sleep(0.2)
        url = re.search(r"ready at (http://\S+);", log_path.read_text()).group(1)
        assert httpx.get(url + "/health/ready").status_code == 200
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health/ready", timeout=2.0)
    trainers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo" / "run")], capture_output=True, text=True)
    assert trainers.stdout.strip() == ""
