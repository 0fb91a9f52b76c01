"""The trainer's typed config: defaults < file < flags, every field documented, --help grouped by concern."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.__main__ import algorithm_options
from trainer.config import SECTIONS, SECTION_TITLES, TrainerConfig, build_parser, config_from_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_field_has_a_one_line_help_text():
    for section_cls in SECTIONS.values():
        for field in dataclasses.fields(section_cls):
            text = field.metadata.get("help", "")
            assert text and "\n" not in text, f"{section_cls.__name__}.{field.name} has no one-line help"


def test_help_lists_every_flag_under_its_section_title():
    text = build_parser().format_help()
    for section, section_cls in SECTIONS.items():
        assert f"{SECTION_TITLES[section]}:" in text
        for field in dataclasses.fields(section_cls):
            assert f"--{field.name.replace('_', '-')}" in text


def test_python_m_trainer_help_exits_zero():
    result = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--reward-url" in result.stdout and "optimisation" in result.stdout


def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 1e-3, "steps": 7}, "algorithm": {"algo": "tempflow"},
                                    "rewards": {"reward_url": ["http://127.0.0.1:9000"]}}))
    config, _ = config_from_args(["--config", str(path), "--steps", "9", "--no-tensorboard"])
    assert config.optim.lr == 1e-3 and config.optim.steps == 9 and config.algorithm.algo == "tempflow"
    assert config.logging.tensorboard is False and config.optim.grad_clip == 1.0
    assert config.rewards.reward_url == ["http://127.0.0.1:9000"]


def test_json_files_and_json_flag_values_are_accepted(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": {"groups_per_epoch": 4}}))
    config, _ = config_from_args(["--config", str(path), "--algo-options", '{"kl_mode": "exact"}',
                                  "--reward", "name=a,url=http://h:1", "--reward-url", "http://h:2"])
    assert config.data.groups_per_epoch == 4 and config.algorithm.algo_options == {"kl_mode": "exact"}
    assert config.rewards.reward_url == ["name=a,url=http://h:1", "http://h:2"]


def test_unknown_fields_in_a_file_are_rejected_by_name(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optim": {"learning_rate": 1.0}}))
    with pytest.raises(ValueError, match="learning_rate"):
        config_from_args(["--config", str(path)])


def test_resume_flag_alone_means_latest():
    config, _ = config_from_args(["--resume"])
    assert config.checkpoint.resume == "latest"


def test_validation_names_what_to_change():
    config = TrainerConfig()
    with pytest.raises(ValueError, match="--reward-url"):
        config.validate()
    config.rewards.reward_url = ["http://h:1"]
    config.data.groups_per_epoch = 3
    with pytest.raises(ValueError, match="divisible"):
        config.validate(world_size=2)


def test_unset_algorithm_knobs_are_left_to_the_algorithm_defaults():
    config, _ = config_from_args(["--group-size", "8", "--kl-beta", "0.01", "--algo-options", '{"same_latent": true}'])
    assert algorithm_options(config) == {"group_size": 8, "shift": 3.0, "beta": 0.01, "same_latent": True}


def test_noise_block_flag_reaches_every_sde_algorithm_and_unset_keeps_the_papers_isotropic_noise():
    from trainer.__main__ import build_algorithm

    for algo in ("flow_grpo", "flow_grpo_fixed", "tempflow", "pave"):
        config, _ = config_from_args(["--algo", algo, "--noise-block", "4", "--reward-url", "http://127.0.0.1:1"])
        assert build_algorithm(config).config.noise_block == 4
        config, _ = config_from_args(["--algo", algo, "--reward-url", "http://127.0.0.1:1"])
        assert build_algorithm(config).config.noise_block == 1
