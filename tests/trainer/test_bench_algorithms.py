"""bench/algorithms.py: a finished run is kept with the settings it was measured under and reused only under them."""
from __future__ import annotations

import argparse
import sys

from services.common.launcher import REPO_ROOT
from trainer.reward_curve import CurvePoint

sys.path.insert(0, str(REPO_ROOT / "bench"))
from algorithms import RunResult, load_run_result, save_run_result  # noqa: E402


def _args(**overrides) -> argparse.Namespace:
    return argparse.Namespace(**{"nfe_budget": 60000, "eval_samples": 4, "model_dir": "", **overrides})


def _finished_run(run_dir) -> RunResult:
    run_dir.mkdir()
    return RunResult("tempflow", 1, str(run_dir), 123.0, [CurvePoint(3, 1000, 0.4), CurvePoint(6, 2000, 0.5)],
                     [CurvePoint(3, 1000, 0.45)], {"overall": 0.5, "counting": 0.25})


def test_a_finished_run_is_read_back_as_it_was_measured(tmp_path):
    result = _finished_run(tmp_path / "tempflow-seed1")
    save_run_result(result, _args())
    assert load_run_result(tmp_path / "tempflow-seed1", _args()) == result


def test_a_run_measured_under_another_budget_evaluation_or_base_is_not_reused(tmp_path):
    save_run_result(_finished_run(tmp_path / "tempflow-seed1"), _args())
    for changed in ({"nfe_budget": 20000}, {"eval_samples": 8}, {"model_dir": "other"}):
        assert load_run_result(tmp_path / "tempflow-seed1", _args(**changed)) is None


def test_a_run_without_a_result_file_is_not_finished(tmp_path):
    (tmp_path / "flow_grpo-seed0").mkdir()
    assert load_run_result(tmp_path / "flow_grpo-seed0", _args()) is None
