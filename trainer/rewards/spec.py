"""Typed description of the rewards a training run scores with, and how it talks to their services.

A run scores every rollout with one or more rewards. Each reward is a `RewardSpec`: a name, one or more URLs
(replicas of the same service, load-balanced least-busy with round-robin ties), a mixing weight, an optional API
key, an optional per-request timeout and an optional component: one of the named parts every reply carries
(GenEval's `strict` and `partial`, HPSv3's `mu` and `sigma`) taken as the reward instead of the reply's value, so two
rewards can be two parts of one service (e.g. GenEval strict 0.5 + partial 0.5; each spec sends its own requests).
`RewardSetConfig` holds the list with the mixing mode and the retry policy; it is what a reward config file
(trainer.rewards.config_file) or the CLI flags (`--reward-url`, `--reward`, parsed here) produce.
"""
from __future__ import annotations

import os
from enum import Enum
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MixingMode(str, Enum):
    """How several rewards become one scalar per image (trainer.rewards.mixer)."""

    # Weighted sum of the raw rewards; the algorithm's group advantage normalises later (Flow-GRPO).
    SUM_THEN_NORMALIZE = "sum_then_normalize"
    # Each reward normalised within its advantage group (mean 0, std 1, eps 1e-4), then the weighted sum.
    NORMALIZE_THEN_SUM = "normalize_then_sum"


class RetryPolicy(BaseModel):
    """When and how long the client keeps retrying a reward service before it declares the reward down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_backoff_s: float = Field(0.25, gt=0)  # wait before the first retry, seconds
    max_backoff_s: float = Field(8.0, gt=0)  # cap on one wait between retries, seconds
    multiplier: float = Field(2.0, ge=1.0)  # the backoff grows by this factor after every failed attempt
    jitter: float = Field(0.5, ge=0.0, le=1.0)  # each wait is scaled by a uniform factor in [1 - jitter, 1]
    deadline_s: float = Field(120.0, gt=0)  # total time one scoring call may spend retrying, seconds
    request_timeout_s: float = Field(60.0, gt=0)  # one HTTP request's timeout unless the reward sets its own, s
    connect_timeout_s: float = Field(5.0, gt=0)  # time to open a TCP connection to a replica, seconds


class RewardSpec(BaseModel):
    """One reward: which service(s) compute it and how much it counts in the mix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)  # key in logs and in the mix, e.g. "pickscore"; unique within a run
    urls: tuple[str, ...] = Field(min_length=1)  # base URLs of replicas, e.g. "http://10.0.0.5:8000"
    weight: float = 1.0  # multiplier of this reward in the weighted sum (may be 0 to log only, or negative)
    # bearer token sent as `Authorization: Bearer ...`; None = no auth header. Never printed or dumped.
    api_key: str | None = Field(None, repr=False, exclude=True)
    api_key_env: str | None = None  # name of an environment variable holding the token (keeps it out of files)
    timeout_s: float | None = Field(None, gt=0)  # one HTTP request's timeout, seconds; None = RetryPolicy's
    max_in_flight: int = Field(4, ge=1)  # concurrent requests per replica (more chunks wait their turn)
    # named component of the reply used as this reward (must be in the service's ModelInfo.components); None = value
    component: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _accept_url_alias(cls, data):
        """`url` (one string or a list) is accepted as an alias of `urls`."""
        if isinstance(data, dict) and "url" in data:
            data = dict(data)
            url = data.pop("url")
            if "urls" in data:
                raise ValueError("give either `url` or `urls`, not both")
            data["urls"] = [url] if isinstance(url, str) else url
        return data

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"reward URL {url!r} must look like http://host:port")
            checked.append(url.rstrip("/"))
        return tuple(checked)

    def bearer_token(self) -> str | None:
        """The API key to send: `api_key`, else the value of `api_key_env` (an unset variable is an error)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            token = os.environ.get(self.api_key_env)
            if not token:
                raise ValueError(f"reward {self.name!r}: environment variable {self.api_key_env} is not set")
            return token
        return None


class RewardSetConfig(BaseModel):
    """Everything a reward config file holds: the rewards, how they mix, how their services are retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rewards: tuple[RewardSpec, ...] = Field(min_length=1)  # the rewards every rollout is scored with
    mixing: MixingMode = MixingMode.SUM_THEN_NORMALIZE  # how the rewards combine into one scalar per image
    normalize_eps: float = Field(1e-4, gt=0)  # eps of normalize_then_sum: (r - mean) / (std + eps)
    retry: RetryPolicy = RetryPolicy()  # backoff and deadline shared by every reward's client

    @field_validator("rewards")
    @classmethod
    def _unique_names(cls, rewards: tuple[RewardSpec, ...]) -> tuple[RewardSpec, ...]:
        names = [r.name for r in rewards]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"reward names must be unique; repeated: {', '.join(duplicated)}")
        return rewards

    def weights(self) -> dict[str, float]:
        """Reward name -> weight, in config order."""
        return {r.name: r.weight for r in self.rewards}


def _default_name(url: str) -> str:
    return urlsplit(url).netloc


def parse_reward_flag(text: str) -> RewardSpec:
    """Parse one `--reward` / `--reward-url` value into a RewardSpec.

    Accepted forms:
      `http://host:port`                                    one reward named after host:port, weight 1
      `name=pickscore,url=http://h:p,weight=0.5`            keys: name, url (repeat it for replicas), weight,
                                                             api_key_env, api_key, timeout_s, max_in_flight,
                                                             component
      `http://h:p,name=pickscore,weight=0.5`                 a bare URL first, then keys
    """
    fields: dict[str, object] = {}
    urls: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            if part.startswith(("http://", "https://")):
                urls.append(part)
                continue
            raise ValueError(f"--reward {text!r}: {part!r} is neither key=value nor a URL")
        key, value = (s.strip() for s in part.split("=", 1))
        if key in ("url", "urls"):
            urls.append(value)
        elif key in fields:
            raise ValueError(f"--reward {text!r}: key {key!r} given twice")
        else:
            fields[key] = value
    if not urls:
        raise ValueError(f"--reward {text!r}: no url given")
    fields.setdefault("name", _default_name(urls[0]))
    return RewardSpec(urls=urls, **fields)


def specs_from_flags(reward_flags: list[str]) -> tuple[RewardSpec, ...]:
    """Every `--reward-url` / `--reward` flag value, in order, as specs (names must be unique)."""
    specs = tuple(parse_reward_flag(flag) for flag in reward_flags)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique across flags (give name=...): {names}")
    return specs
