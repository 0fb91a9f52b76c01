"""`run_service(scorer_factory, argv)`: the one entry point behind every `python -m services.<name>`.

Parses the scorer's own flags plus the shared service flags (`REWARD_*` env as fallback), loads the weights before
binding (so a missing weight is a clear startup error and exit status 1, never a silent fallback), then serves with
uvicorn; a failed warm-up forward also exits with status 1. SIGTERM (or Ctrl-C) drains: /health/ready turns 503, new requests get 503, admitted work finishes, then
the process exits 0. A second signal stops at once.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from services.common.app import FAILED, ServiceState, create_app
from services.common.scorer import Scorer, WeightsNotFoundError
from services.common.settings import add_settings_arguments, settings_from_arguments

log = logging.getLogger("reward.serve")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the service before it stops."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.exit_code = 0  # process exit status run_service returns

    async def serve(self, sockets=None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        watcher = self._loop.create_task(self._exit_if_start_up_fails())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()

    async def _exit_if_start_up_fails(self) -> None:
        """A failed warm-up forward stops the process (status 1), so a supervisor restarts or reports it."""
        while self.service_state.warmup_task is None:
            await asyncio.sleep(0.05)
        await self.service_state.warmup_task
        if self.service_state.phase == FAILED:
            log.error("start-up failed, exiting: %s", self.service_state.failure)
            self.exit_code = 1
            self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self.service_state.drain()
        self.should_exit = True


def run_service(scorer_factory: Callable[[argparse.Namespace], Scorer], argv: list[str] | None = None, *,
                name: str = "reward", add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                description: str | None = None) -> int:
    """Build the scorer from parsed flags, load it, serve it until drained. Returns the process exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=description)
    if add_arguments is not None:
        add_arguments(parser)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_arguments(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scorer = scorer_factory(args)
    try:
        scorer.setup()
    except WeightsNotFoundError as error:
        print(f"{parser.prog}: error: weights not found: {error}", file=sys.stderr)
        return 1
    app = create_app(scorer, settings, setup_done=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(settings.drain_timeout_s) or None, lifespan="on")
    server = DrainingServer(config, app.state.service)
    server.run()
    return server.exit_code
