"""The mmdet backend's settings and startup errors (these run without mmdet: paths are checked before importing it)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from services.common.scorer import WeightsNotFoundError
from services.geneval.mmdet_backend import CHECKPOINT_URL, MMDetBackend, MMDetBackendConfig, add_arguments, build_backend
from tests.support.service_process import REPO_ROOT


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "mask2former.py"
    path.write_text("model = dict()\n")
    return path


def test_missing_config_names_the_flag(tmp_path):
    backend = MMDetBackend(MMDetBackendConfig(config=str(tmp_path / "absent.py"), checkpoint="x.pth"))
    with pytest.raises(WeightsNotFoundError, match="--mmdet-config"):
        backend.setup()


def test_unset_checkpoint_names_the_download_and_the_flag(config_file):
    with pytest.raises(WeightsNotFoundError, match="--mmdet-checkpoint") as caught:
        MMDetBackend(MMDetBackendConfig(config=str(config_file))).setup()
    assert CHECKPOINT_URL in str(caught.value)


def test_missing_checkpoint_file_names_where_it_looked(config_file, tmp_path):
    absent = tmp_path / "weights" / "mask2former.pth"
    with pytest.raises(WeightsNotFoundError, match=str(absent)):
        MMDetBackend(MMDetBackendConfig(config=str(config_file), checkpoint=str(absent))).setup()


def test_flags_fall_back_to_geneval_environment_variables(monkeypatch):
    monkeypatch.setenv("GENEVAL_MMDET_CHECKPOINT", "/models/mmdet/m2f.pth")
    monkeypatch.setenv("GENEVAL_CLIP_MODEL", "/models/clip")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    backend = build_backend(parser.parse_args(["--mmdet-device", "cpu"]))
    assert backend.config.checkpoint == "/models/mmdet/m2f.pth"
    assert backend.config.clip_model == "/models/clip" and backend.config.device == "cpu"


@pytest.mark.slow
def test_service_without_checkpoint_exits_with_a_clear_error(config_file):
    result = subprocess.run([sys.executable, "-m", "services.geneval", "--detector", "mmdet", "--mmdet-config",
                             str(config_file), "--port", "0"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert result.returncode == 1
    assert "--mmdet-checkpoint" in result.stderr and CHECKPOINT_URL in result.stderr
