"""bench/geneval_headroom.py: strict accuracy at scaled confidence thresholds, on the demo evaluation's images."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.launcher import REPO_ROOT

pytestmark = pytest.mark.slow


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_scale_one_row_is_the_evaluate_commands_accuracy_and_every_row_is_per_tag():
    out = run("bench/geneval_headroom.py", "--samples", "2", "--steps", "4", "--scales", "1", "0.17",
              "--threads", "1")
    header, *rows = [line.split() for line in out.splitlines()]
    assert header[-1] == "overall" and len(header) == 9  # "threshold scale", six tags, overall
    assert [r[0] for r in rows] == ["1", "0.17", "graded", "best"]
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[-7:])
    evaluated = json.loads(run("-m", "trainer.shapes_world.evaluate", "--samples", "2", "--steps", "4"))
    assert float(rows[0][-1]) == pytest.approx(evaluated["heldout_strict"]["overall"], abs=1e-3)
    assert all(float(best) >= float(single) for best, single in zip(rows[3][-7:], rows[0][-7:]))


def test_best_of_samples_credits_a_prompt_when_any_of_its_samples_is_correct():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from geneval_headroom import best_of_samples

    assert best_of_samples([False, True, False, False, True, True], 2) == [True, False, True]
    with pytest.raises(ValueError, match="whole groups"):
        best_of_samples([True, False, True], 2)
