"""bench/gradient_snr.py: one row per branch-step set, cosines of real gradients against the shuffled floor."""
from __future__ import annotations

import subprocess
import sys

import torch

from services.common.launcher import REPO_ROOT


def test_identical_gradients_have_cosine_one_and_opposite_ones_minus_one():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from gradient_snr import mean_pair_cosine

    g = torch.tensor([1.0, -2.0, 3.0])
    assert abs(mean_pair_cosine([g, 2 * g]) - 1.0) < 1e-6
    assert abs(mean_pair_cosine([g, -g]) + 1.0) < 1e-6
    assert mean_pair_cosine([g, torch.zeros(3)]) != mean_pair_cosine([g, torch.zeros(3)])  # NaN


def test_the_benchmark_prints_one_row_per_branch_step_set_noise_block_and_antithetic_flag():
    result = subprocess.run([sys.executable, "bench/gradient_snr.py", "--configs", "2", "1,3", "--branches", "2",
                             "--prompts", "2", "--batches", "2", "--threads", "1", "--noise-blocks", "1", "4",
                             "--antithetic", "0", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [(k, b, a) for k in ("2", "1,3") for b in ("1", "4") for a in "01"]
    assert [int(r[3]) for r in rows] == [4, 4, 4, 4, 8, 8, 8, 8]
    # NaN: a tiny batch may hold no reward variance at all (then no gradient to compare)
    assert all(value == "nan" or -1.0 <= float(value) <= 1.0 for r in rows for value in r[4:6])
