"""compose.yaml's reward-hpsv3 and trainer services, and the HPSv3 Dockerfile (no Docker engine runs here: the
file is read as YAML and checked against the settings the processes really read; tests/services/
test_pickscore_compose.py validates the whole file against the compose specification)."""
from __future__ import annotations

import yaml

from services.common.settings import ServiceSettings
from tests.support.service_process import REPO_ROOT

SERVICES = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
REWARDS = ("reward-pickscore", "reward-hpsv3", "reward-geneval")


def test_reward_hpsv3_reserves_a_gpu_and_mounts_the_hf_cache_offline():
    service = SERVICES["reward-hpsv3"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(volume.endswith(":/models/huggingface") for volume in service["volumes"])
    assert service["environment"]["HF_HOME"] == "/models/huggingface"
    assert service["environment"]["HF_HUB_OFFLINE"] == "1"


def test_reward_hpsv3_healthcheck_probes_readiness():
    check = SERVICES["reward-hpsv3"]["healthcheck"]
    assert "/health/ready" in " ".join(check["test"]) and check["start_period"]


def test_reward_hpsv3_environment_names_only_settings_the_service_reads():
    environment = SERVICES["reward-hpsv3"]["environment"]
    reward_names = {"REWARD_" + field.upper() for field in ServiceSettings.model_fields}
    hpsv3_names = {"HPSV3_MODEL", "HPSV3_CHECKPOINT", "HPSV3_DEVICE", "HPSV3_DTYPE"}  # services/hpsv3/__main__.py
    assert {key for key in environment if key.startswith("REWARD_")} <= reward_names
    assert {key for key in environment if key.startswith("HPSV3_")} <= hpsv3_names


def test_trainer_waits_for_every_reward_to_be_healthy():
    depends = SERVICES["trainer"]["depends_on"]
    assert set(depends) == set(REWARDS)
    assert all(depends[name]["condition"] == "service_healthy" for name in REWARDS)
    assert all("healthcheck" in SERVICES[name] for name in REWARDS)


def test_trainer_sends_to_each_reward_service_by_its_compose_name():
    urls = [arg for arg in SERVICES["trainer"]["command"] if arg.startswith("--reward-url=")]
    for name in REWARDS:
        assert any(f"url=http://{name}:8000" in url for url in urls)
    assert SERVICES["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_hpsv3_dockerfile_serves_offline_on_all_interfaces_with_a_readiness_healthcheck():
    text = (REPO_ROOT / "services" / "hpsv3" / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "services.hpsv3"]' in text
    assert "REWARD_HOST=0.0.0.0" in text and "HF_HUB_OFFLINE=1" in text
    assert "HEALTHCHECK" in text and "/health/ready" in text
