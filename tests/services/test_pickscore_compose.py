"""compose.yaml and the PickScore Dockerfile (no Docker engine runs here: the compose file is validated against the
compose specification's JSON schema, offline, and its reward-pickscore service is checked against the settings the
service really reads)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from services.common.settings import ServiceSettings
from tests.support.service_process import REPO_ROOT

COMPOSE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "services" / "pickscore" / "Dockerfile"


def pickscore_service() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]["reward-pickscore"]


def test_compose_file_is_valid_against_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reward_pickscore_reserves_a_gpu_mounts_the_hf_cache_and_publishes_a_port():
    service = pickscore_service()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(volume.endswith(":/models/huggingface") for volume in service["volumes"])
    assert service["environment"]["HF_HOME"] == "/models/huggingface"
    assert any(port.endswith(":8000") for port in service["ports"])
    assert Path(REPO_ROOT / service["build"]["dockerfile"]) == DOCKERFILE


def test_reward_pickscore_healthcheck_probes_readiness():
    check = pickscore_service()["healthcheck"]
    assert "/health/ready" in " ".join(check["test"]) and check["start_period"]


def test_every_reward_setting_in_compose_is_one_the_service_reads():
    names = {"REWARD_" + field.upper() for field in ServiceSettings.model_fields}
    given = {key for key in pickscore_service()["environment"] if key.startswith("REWARD_")}
    assert given and given <= names


def test_dockerfile_runs_the_service_on_all_interfaces_offline_with_a_readiness_healthcheck():
    text = DOCKERFILE.read_text()
    assert 'CMD ["python", "-m", "services.pickscore"]' in text
    assert "REWARD_HOST=0.0.0.0" in text and "HF_HUB_OFFLINE=1" in text
    assert "HEALTHCHECK" in text and "/health/ready" in text
