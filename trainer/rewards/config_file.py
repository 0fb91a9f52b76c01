"""Reading a reward config file (YAML or JSON) into a `RewardSetConfig`.

Format (YAML shown; the same keys in JSON):

    mixing: normalize_then_sum        # or sum_then_normalize (default)
    retry: {deadline_s: 120}          # optional, fields of trainer.rewards.spec.RetryPolicy
    rewards:
      - name: pickscore
        url: http://10.0.0.5:8000     # or urls: [http://a:8000, http://b:8000] for replicas
        weight: 0.5
      - name: geneval
        url: http://10.0.0.6:8001
        weight: 1.0
        api_key_env: GENEVAL_TOKEN

The file is read as bytes once and both parsed and hashed from those bytes, so the content that was validated is
exactly the content whose hash the hot-swap watcher (trainer.rewards.reward_set) remembers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from trainer.rewards.spec import RewardSetConfig


class RewardConfigError(ValueError):
    """The reward config file could not be read, parsed or validated; the message names the file and the field."""


@dataclass(frozen=True)
class LoadedRewardConfig:
    """A validated config with the identity of the file content it came from."""

    config: RewardSetConfig  # the validated rewards, mixing mode and retry policy
    sha256: str  # hex digest of the file bytes that were parsed
    mtime_ns: int  # modification time of the file when it was read, nanoseconds since the epoch
    size: int  # length of the file bytes that were parsed


def parse_reward_config(raw: bytes, source: str = "<bytes>") -> RewardSetConfig:
    """Parse YAML or JSON bytes (JSON is YAML, so one parser serves both) and validate them."""
    try:
        data = json.loads(raw) if source.endswith(".json") else yaml.safe_load(raw)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RewardConfigError(f"{source}: not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict):
        raise RewardConfigError(f"{source}: expected a mapping with a `rewards` list, got {type(data).__name__}")
    try:
        return RewardSetConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
        raise RewardConfigError(f"{source}: {problems}") from err


def load_reward_config(path: str | Path) -> LoadedRewardConfig:
    """Read, parse and validate a reward config file."""
    path = Path(path)
    try:
        mtime_ns = path.stat().st_mtime_ns
        raw = path.read_bytes()
    except OSError as err:
        raise RewardConfigError(f"{path}: cannot read reward config: {err}") from err
    config = parse_reward_config(raw, source=str(path))
    return LoadedRewardConfig(config=config, sha256=hashlib.sha256(raw).hexdigest(), mtime_ns=mtime_ns,
                              size=len(raw))
