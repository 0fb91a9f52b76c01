"""Service settings: defaults, REWARD_* environment variables, and command-line flags that override them."""
from __future__ import annotations

import argparse

from services.common.settings import ServiceSettings, add_settings_arguments, settings_from_arguments


def parse(argv: list[str]) -> ServiceSettings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_arguments(parser.parse_args(argv))


def test_binds_loopback_and_needs_no_key_by_default(monkeypatch):
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv("REWARD_" + name.upper(), raising=False)
    settings = parse([])
    assert settings.host == "127.0.0.1" and settings.api_key is None


def test_environment_sets_a_field(monkeypatch):
    monkeypatch.setenv("REWARD_MAX_BATCH_ITEMS", "7")
    monkeypatch.setenv("REWARD_MAX_WAIT_MS", "2.5")
    settings = parse([])
    assert settings.max_batch_items == 7 and settings.max_wait_ms == 2.5


def test_flag_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("REWARD_PORT", "9000")
    monkeypatch.setenv("REWARD_API_KEY", "from-env")
    settings = parse(["--port", "9100", "--api-key", "from-flag", "--max-image-pixels", "1000"])
    assert settings.port == 9100 and settings.api_key == "from-flag" and settings.max_image_pixels == 1000
