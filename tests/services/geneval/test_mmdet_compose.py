"""compose.yaml's reward-geneval service and the GenEval Dockerfile (mmdet detector, mmcv compiled for CUDA)."""
from __future__ import annotations

import argparse

import yaml

from services.geneval import mmdet_backend
from tests.support.service_process import REPO_ROOT

SERVICE = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]["reward-geneval"]
DOCKERFILE = (REPO_ROOT / "services" / "geneval" / "Dockerfile").read_text()


def test_reward_geneval_serves_the_mmdet_detector_with_a_gpu():
    assert SERVICE["command"][:4] == ["python", "-m", "services.geneval", "--detector"]
    assert SERVICE["command"][4] == "mmdet"
    devices = SERVICE["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_reward_geneval_checkpoint_lies_in_a_mounted_volume():
    checkpoint = SERVICE["environment"]["GENEVAL_MMDET_CHECKPOINT"]
    mounts = [volume[volume.index(":/") + 1:].split(":")[0] for volume in SERVICE["volumes"]]  # container paths
    assert any(checkpoint.startswith(mount + "/") for mount in mounts)
    assert "/models/huggingface" in mounts and SERVICE["environment"]["HF_HUB_OFFLINE"] == "1"


def test_reward_geneval_environment_names_flags_the_backend_reads():
    parser = argparse.ArgumentParser()
    mmdet_backend.add_arguments(parser)
    helps = " ".join(action.help or "" for action in parser._actions)
    for key in SERVICE["environment"]:
        if key.startswith("GENEVAL_"):
            assert f"env {key}" in helps


def test_reward_geneval_healthcheck_probes_readiness():
    assert "/health/ready" in " ".join(SERVICE["healthcheck"]["test"]) and SERVICE["healthcheck"]["start_period"]


def test_geneval_dockerfile_compiles_mmcv_with_cuda_ops():
    assert "FORCE_CUDA=1" in DOCKERFILE and "MMCV_WITH_OPS=1" in DOCKERFILE and "mmcv==2.1.0" in DOCKERFILE
    assert "-devel" in DOCKERFILE and "import mmcv._ext" in DOCKERFILE
    assert 'CMD ["python", "-m", "services.geneval", "--detector", "mmdet"]' in DOCKERFILE
