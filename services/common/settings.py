"""Typed settings of a reward service, read from `REWARD_*` environment variables and command-line flags.

Precedence: command-line flag > `REWARD_<FIELD>` environment variable > default. Every service
(`python -m services.<name>`) shares these; a scorer adds its own flags (e.g. `--model`) in its `__main__`.
"""
from __future__ import annotations

import argparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Serving limits and network settings of one reward service."""

    model_config = SettingsConfigDict(env_prefix="REWARD_", extra="ignore")

    host: str = "127.0.0.1"  # interface to bind; loopback unless told otherwise (use 0.0.0.0 in a container)
    port: int = Field(8000, ge=0, le=65535)  # TCP port to listen on
    max_batch_items: int = Field(16, ge=1)  # most items in one forward of the scorer
    max_wait_ms: float = Field(10.0, ge=0)  # longest an item waits for a batch to fill before it runs, ms
    max_queue_items: int = Field(512, ge=1)  # items admitted and not yet in a forward; beyond this: 429
    max_request_items: int = Field(64, ge=1)  # most items in one request; beyond this: 413
    max_request_bytes: int = Field(128 * 1024 * 1024, ge=1)  # largest request body, bytes; beyond this: 413
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # largest image (height * width), pixels; checked before decoding
    default_deadline_ms: int = Field(60_000, ge=1)  # deadline of a request that sets none (queue + compute), ms
    api_key: str | None = None  # when set, /v1/score and /v1/info need `Authorization: Bearer <api_key>`
    drain_timeout_s: float = Field(60.0, ge=0)  # on SIGTERM, longest wait for queued and running work, s
    log_level: str = "info"  # uvicorn log level


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--kebab-case` flag per settings field; unset flags fall back to env, then to the default."""
    group = parser.add_argument_group("service settings (also REWARD_<NAME> env variables)")
    for name, field in ServiceSettings.model_fields.items():
        annotation = field.annotation
        kind = {int: int, float: float}.get(annotation, str)  # type: ignore[arg-type]
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=f"(env REWARD_{name.upper()}; default {field.default!r})",
        )


def settings_from_arguments(namespace: argparse.Namespace) -> ServiceSettings:
    """Build settings from parsed flags (flags that were given override the environment)."""
    given = {name: getattr(namespace, name) for name in ServiceSettings.model_fields if getattr(namespace, name, None) is not None}
    return ServiceSettings(**given)
