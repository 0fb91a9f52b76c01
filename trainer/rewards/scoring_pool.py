"""The trainer's reward client: scores a rollout with every reward at once, in the background, and mixes.

`RewardClient.submit(query)` returns at once with a `ScoringHandle`; the images are copied and sent from a
background thread that runs its own asyncio event loop, so the training loop can sample the next rollout while
the services score this one. `handle.result()` blocks until every reward answered and returns `MixedRewards`
(trainer.rewards.mixer), or raises the first failure (RewardUnavailableError, RewardItemError,
RewardServiceError, MissingRewardError): a step never trains on a missing reward.

Each submit takes a snapshot of the RewardSet (weights, URLs, mixing), so `reload_if_changed()` between steps
takes effect from the next submitted query on. Per-reward service clients (and their cached /v1/info) are kept
across queries and rebuilt only when that reward's spec or the retry policy changed.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from typing import Any

import httpx
import numpy as np
import torch

from trainer.algorithms.base import RewardQuery
from trainer.rewards.mixer import MixedRewards, RewardMixer
from trainer.rewards.reward_set import ReloadResult, RewardSet
from trainer.rewards.service_client import RewardScores, RewardServiceClient, RewardUnavailableError
from trainer.rewards.spec import RewardSetConfig
from trainer.rewards.wire import model_info_dict


class ScoringHandle:
    """A query being scored; `result()` waits for the mixed rewards."""

    def __init__(self, future: concurrent.futures.Future, size: int) -> None:
        self._future = future
        self.size = size  # number of images in the query

    def done(self) -> bool:
        """True once every reward answered (or scoring failed)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> MixedRewards:
        """The mixed rewards; re-raises the scoring failure. `timeout` in seconds (None = wait as long as it takes:
        the retry policy's deadline bounds it)."""
        return self._future.result(timeout)


class RewardClient:
    """Owns the background event loop and one service client per reward. Close it (or use `with`) when done."""

    def __init__(self, rewards: RewardSet, seed: int | None = None) -> None:
        self.rewards = rewards  # the reward set; its current config is snapshotted at every submit
        self._rng = random.Random(seed)  # jitter of retry backoff
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reward-client", daemon=True)
        self._thread.start()
        self._http: httpx.AsyncClient | None = None
        self._clients: dict[str, RewardServiceClient] = {}
        self._closed = False

    # ----- training-loop API -----
    def submit(self, query: RewardQuery) -> ScoringHandle:
        """Start scoring `query` with the current reward set; returns at once."""
        if self._closed:
            raise RuntimeError("RewardClient is closed")
        if query.images.dtype != torch.uint8 or query.images.ndim != 4:
            raise ValueError(f"RewardQuery.images must be uint8 [M, H, W, C], got {query.images.dtype} "
                             f"{tuple(query.images.shape)}")
        images = np.ascontiguousarray(query.images.detach().cpu().numpy()).copy()
        snapshot = _QuerySnapshot(images=images, prompts=list(query.prompts), metadata=list(query.metadata),
                                  branch=list(query.branch), group=query.group.detach().cpu().clone())
        if not (len(images) == len(snapshot.prompts) == len(snapshot.metadata) == len(snapshot.branch)
                == len(snapshot.group)):
            raise ValueError("RewardQuery fields have different lengths")
        future = asyncio.run_coroutine_threadsafe(self._score(self.rewards.config, snapshot), self._loop)
        return ScoringHandle(future, len(images))

    def score(self, query: RewardQuery) -> MixedRewards:
        """Score and mix `query`, waiting for the result."""
        return self.submit(query).result()

    def reload_if_changed(self) -> ReloadResult:
        """Re-read the reward config file between steps (see RewardSet.reload_if_changed)."""
        return self.rewards.reload_if_changed()

    def model_info(self) -> dict[str, dict[str, Any]]:
        """Each current reward's service model info (reads /v1/info where not yet known)."""
        async def gather() -> dict[str, dict[str, Any]]:
            clients = self._clients_for(self.rewards.config)
            infos = await asyncio.gather(*(c.info() for c in clients.values()))
            return {name: model_info_dict(info) for name, info in zip(clients, infos)}

        return asyncio.run_coroutine_threadsafe(gather(), self._loop).result()

    def close(self) -> None:
        """Close connections and stop the background loop (pending queries are cancelled)."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._http is not None:
                await self._http.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- background loop -----
    def _clients_for(self, config: RewardSetConfig) -> dict[str, RewardServiceClient]:
        """Service clients for the rewards of `config`, reusing those whose spec and policy did not change."""
        if self._http is None:
            self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        clients = {}
        for spec in config.rewards:
            client = self._clients.get(spec.name)
            if client is None or client.spec != spec or client.policy != config.retry:
                client = RewardServiceClient(spec, config.retry, self._http, self._rng)
            clients[spec.name] = client
        self._clients = clients
        return clients

    async def _score(self, config: RewardSetConfig, query: "_QuerySnapshot") -> MixedRewards:
        clients = self._clients_for(config)
        results = await asyncio.gather(
            *(c.score(query.images, query.prompts, query.metadata, query.branch) for c in clients.values()),
            return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # An unavailable service is the most actionable message; otherwise the first failure in config order.
            raise next((f for f in failures if isinstance(f, RewardUnavailableError)), failures[0])
        scores: list[RewardScores] = results
        return RewardMixer.from_config(config).mix(raw={s.name: torch.from_numpy(s.values) for s in scores}, group=query.group,
                         components={s.name: {k: torch.from_numpy(v) for k, v in s.components.items()}
                                     for s in scores},
                         model_info={s.name: s.model_info for s in scores},
                         service_stats={s.name: {"requests": s.requests, "retries": s.retries,
                                                 "queue_ms": s.queue_ms, "compute_ms": s.compute_ms}
                                        for s in scores})


class _QuerySnapshot:
    """A private copy of a RewardQuery, so the caller may reuse its tensors while scoring runs."""

    def __init__(self, images: np.ndarray, prompts: list[str], metadata: list, branch: list,
                 group: torch.Tensor) -> None:
        self.images = images  # uint8 [M, H, W, C]
        self.prompts = prompts  # length M
        self.metadata = metadata  # length M, dict or None
        self.branch = branch  # length M, dict or None
        self.group = group  # int64 [M]
