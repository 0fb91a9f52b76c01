"""Checkpoints: exact round trip of weights, optimizer and RNG states; atomic writes that a SIGKILL cannot corrupt."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import (TrainingState, capture_global_rng, checkpoint_problem, latest_valid_checkpoint,
                                list_checkpoints, load_checkpoint, remove_unfinished_writes, restore_global_rng,
                                save_checkpoint)

REPO_ROOT = Path(__file__).resolve().parents[2]


def adamw_after_steps(steps: int, seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        layer(torch.randn(16, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return layer, optimizer


def state_of(layer: torch.nn.Linear, optimizer: torch.optim.Optimizer, step: int) -> TrainingState:
    return TrainingState(step=step, epoch=step, lora={k: v.detach().clone() for k, v in layer.state_dict().items()},
                         optimizer=optimizer.state_dict(), ema={k: v * 0.5 for k, v in layer.state_dict().items()},
                         data={"groups_consumed": 6}, algorithm_json={"cost": {"sampling_nfe": 3}},
                         generators={"rollout": torch.Generator().manual_seed(5).get_state()},
                         rng=capture_global_rng(), extra={"note": "x"})


def continue_training(layer, optimizer, steps: int) -> dict[str, torch.Tensor]:
    for _ in range(steps):
        layer(torch.randn(16, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def test_resuming_from_a_checkpoint_continues_bitwise_like_the_uninterrupted_run(tmp_path):
    layer, optimizer = adamw_after_steps(3)
    path = save_checkpoint(tmp_path, state_of(layer, optimizer, 3))
    expected = continue_training(layer, optimizer, 4)  # global RNG continues from the saved state

    loaded = load_checkpoint(path)
    fresh, fresh_optimizer = adamw_after_steps(0, seed=123)
    fresh.load_state_dict(loaded.lora)
    fresh_optimizer.load_state_dict(loaded.optimizer)
    restore_global_rng(loaded.rng)
    resumed = continue_training(fresh, fresh_optimizer, 4)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_checkpoint_round_trips_every_field(tmp_path):
    layer, optimizer = adamw_after_steps(2)
    state = state_of(layer, optimizer, 2)
    loaded = load_checkpoint(save_checkpoint(tmp_path, state))
    assert (loaded.step, loaded.epoch, loaded.data, loaded.extra) == (2, 2, {"groups_consumed": 6}, {"note": "x"})
    assert loaded.algorithm_json == {"cost": {"sampling_nfe": 3}}
    assert all(torch.equal(loaded.ema[k], state.ema[k]) for k in state.ema)
    assert torch.equal(loaded.generators["rollout"], state.generators["rollout"])
    assert loaded.optimizer["param_groups"] == [dict(g, betas=list(g["betas"])) for g in state.optimizer["param_groups"]]


def test_global_rng_states_are_restored_for_torch_numpy_and_python():
    state = capture_global_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_global_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_corrupted_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    layer, optimizer = adamw_after_steps(1)
    older = save_checkpoint(tmp_path, state_of(layer, optimizer, 1))
    newer = save_checkpoint(tmp_path, state_of(layer, optimizer, 2))
    with open(newer / "optimizer.safetensors", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\0\0\0\1")
    assert "optimizer.safetensors" in checkpoint_problem(newer)
    assert latest_valid_checkpoint(tmp_path) == older


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    layer, optimizer = adamw_after_steps(1)
    for step in range(1, 6):
        save_checkpoint(tmp_path, state_of(layer, optimizer, step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]


WRITER = """
import sys, torch
from trainer.checkpoint import TrainingState, save_checkpoint
root = sys.argv[1]
big = {f"w{i}": torch.full((256, 1024), float(i)) for i in range(8)}
step = 0
while True:
    step += 1
    save_checkpoint(root, TrainingState(step=step, epoch=step, lora={k: v + step for k, v in big.items()},
                                        optimizer={"state": {}, "param_groups": []}), keep=1000)
"""


def test_a_writer_killed_mid_write_never_leaves_a_checkpoint_that_loads_wrong(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO_ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 60
    while len(list_checkpoints(tmp_path)) < 3 and time.monotonic() < deadline and writer.poll() is None:
        time.sleep(0.01)
    time.sleep(0.037)  # land somewhere inside a later write
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    checkpoints = list_checkpoints(tmp_path)
    assert len(checkpoints) >= 3
    for path in checkpoints:  # every published step-* directory is complete and holds its own step's weights
        assert checkpoint_problem(path) is None
        loaded = load_checkpoint(path)
        assert torch.equal(loaded.lora["w3"], torch.full((256, 1024), 3.0 + loaded.step))
    remove_unfinished_writes(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_valid_checkpoint(tmp_path) == checkpoints[-1]
