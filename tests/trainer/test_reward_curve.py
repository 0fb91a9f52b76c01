"""Reward curves read from a run's metrics.jsonl and plotted as PNG (demo and algorithm benchmark)."""
from __future__ import annotations

import json

from PIL import Image

from trainer.reward_curve import CurvePoint, plot_reward_curves, read_reward_curve


def write_metrics(path, epochs):
    lines = [{"kind": "start", "step": 0}]
    for epoch, (step, reward, nfe) in enumerate(epochs, start=1):
        lines.append({"kind": "step", "step": step, "loss": 0.0})
        lines.append({"kind": "epoch", "step": step, "epoch": epoch, "reward/global_mixed_mean": reward,
                      "cost": {"sampling_nfe": nfe, "training_nfe": 10, "reference_nfe": 5, "reward_images": 3}})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_a_curve_has_one_point_per_epoch_with_steps_nfe_and_reward(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [(2, 0.1, 100), (4, 0.3, 200)])
    assert read_reward_curve(tmp_path / "metrics.jsonl") == [CurvePoint(2, 115, 0.1), CurvePoint(4, 215, 0.3)]


def test_a_resumed_run_repeating_an_epoch_keeps_its_last_record(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [(2, 0.1, 100), (4, 0.3, 200)])
    with open(tmp_path / "metrics.jsonl", "a") as f:  # the resumed process redoes epoch 2
        f.write(json.dumps({"kind": "epoch", "step": 4, "epoch": 2, "reward/global_mixed_mean": 0.35,
                            "cost": {"sampling_nfe": 200, "training_nfe": 10, "reference_nfe": 5}}) + "\n")
    assert [p.reward for p in read_reward_curve(tmp_path / "metrics.jsonl")] == [0.1, 0.35]


def test_curves_of_several_runs_are_plotted_into_one_png(tmp_path):
    runs = [[CurvePoint(1, 10 * i, 0.1 * i + seed / 100) for i in range(5)] for seed in range(3)]
    path = plot_reward_curves({"a": runs, "b": runs[:1]}, tmp_path / "plots" / "curve.png", x="nfe")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_the_held_out_curve_takes_each_evaluation_at_its_epochs_step_and_nfe(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [(2, 0.1, 100), (4, 0.3, 200)])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "eval", "step": 4, "epoch": 2, "reward_mixed_mean": 0.25}) + "\n")
    assert read_reward_curve(tmp_path / "metrics.jsonl", kind="eval") == [CurvePoint(4, 215, 0.25)]
