"""Async client of one reward (one or more replicas of a reward service) over the protobuf schema.

Per reward:
- `/v1/info` is read once per (re)connection of each replica (again after a connection error or a 503), and the
  query is chunked to the smallest `max_batch_items` (and `max_request_items`) the replicas reported.
- Chunks go out concurrently as raw-uint8 protobuf (trainer.rewards.wire); each picks the least-busy replica
  (fewest requests in flight, ties round-robin) among the replicas not cooling down after a failure, and at most
  `max_in_flight` requests run per replica. A replica that failed is avoided for a backoff that grows with its
  consecutive failures, so a dead replica does not attract the traffic as the "least busy" one.
- 429 (honouring Retry-After), 502, 503, 504, timeouts and connection errors are retried with capped exponential
  backoff and jitter (trainer.rewards.backoff) until the policy's deadline, moving to the next replica each time;
  then `RewardUnavailableError` names the reward, its URLs and the last error. Any other non-2xx reply is a
  `RewardServiceError` at once (retrying a 400/413/500 would not change it).
"""
from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from protos.reward.v1 import reward_pb2
from trainer.rewards.backoff import backoff_s, retry_after_s
from trainer.rewards.spec import RetryPolicy, RewardSpec
from trainer.rewards.wire import (PROTOBUF_MEDIA_TYPE, ChunkScores, build_score_request, model_info_dict,
                                  parse_score_response)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class RewardUnavailableError(RuntimeError):
    """A reward's service stayed unreachable or overloaded past the retry deadline."""

    def __init__(self, reward: str, urls: Sequence[str], last_error: str, attempts: int, waited_s: float) -> None:
        self.reward = reward
        self.urls = tuple(urls)
        self.last_error = last_error
        super().__init__(f"reward {reward!r} is unavailable at {', '.join(urls)} after {attempts} attempt(s) over "
                         f"{waited_s:.1f} s; last error: {last_error}")


class RewardServiceError(RuntimeError):
    """A reward service rejected a request in a way retrying cannot fix (e.g. 400, 401, 413, 500)."""


@dataclass
class RewardScores:
    """One reward's scores for a whole query, aligned with its images."""

    name: str  # the reward's name
    values: np.ndarray  # float64 [M]: the raw reward of each image
    components: dict[str, np.ndarray]  # component name -> float64 [M] (NaN where an item has no such component)
    model_info: dict[str, Any]  # the service's ModelInfo as a dict (name, model, revision, max_batch_items, ...)
    requests: int  # score requests that succeeded (one per chunk)
    retries: int  # failed attempts that were retried
    queue_ms: float  # longest service-reported queue wait over the chunks, milliseconds
    compute_ms: float  # sum of service-reported forward times over the chunks, milliseconds


@dataclass
class _Replica:
    url: str  # base URL of this replica
    slots: asyncio.Semaphore  # bounds the requests in flight to this replica
    in_flight: int = 0  # requests picked for this replica and not yet finished (waiting for a slot included)
    info: reward_pb2.ModelInfo | None = None  # /v1/info of the current connection; None = read it before use
    failures: int = 0  # consecutive failed attempts on this replica (0 after a success)
    retry_at: float = 0.0  # loop time before which this replica is avoided when another is available


@dataclass
class _Attempts:
    count: int = 0  # attempts made so far
    failed: int = 0  # attempts that failed and were (or would have been) retried
    last_error: str = ""  # description of the latest failure
    started: float = 0.0  # loop time of the first attempt


class RewardServiceClient:
    """Scores images with one reward. Create and use it inside one asyncio event loop."""

    def __init__(self, spec: RewardSpec, policy: RetryPolicy, http: httpx.AsyncClient,
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self.policy = policy
        self._http = http
        self._rng = rng or random.Random()
        self._replicas = [_Replica(url, asyncio.Semaphore(spec.max_in_flight)) for url in spec.urls]
        self._turn = itertools.count()
        self._headers = {"Accept": PROTOBUF_MEDIA_TYPE}
        token = spec.bearer_token()
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        timeout_s = spec.timeout_s or policy.request_timeout_s
        self._timeout = httpx.Timeout(timeout_s, connect=min(policy.connect_timeout_s, timeout_s))

    # ----- public -----
    async def info(self) -> reward_pb2.ModelInfo:
        """The model info of a reachable replica (reading /v1/info, with retries, if none is known yet)."""
        known = [r.info for r in self._replicas if r.info is not None]
        if known:
            return known[0]
        attempts = _Attempts(started=asyncio.get_running_loop().time())
        deadline = attempts.started + self.policy.deadline_s
        _, replica = await self._with_retries(None, deadline, attempts)
        return replica.info

    async def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict | None],
                    branch: Sequence[dict | None]) -> RewardScores:
        """Score images [M, H, W, C] uint8; raises RewardUnavailableError / RewardItemError / RewardServiceError."""
        count = len(images)
        attempts = _Attempts(started=asyncio.get_running_loop().time())
        deadline = attempts.started + self.policy.deadline_s
        if not any(r.info is not None for r in self._replicas):
            await self._with_retries(None, deadline, attempts)
        chunk = self._chunk_size(count)
        starts = list(range(0, count, chunk))
        request_id = uuid.uuid4().hex[:12]

        async def score_chunk(start: int) -> ChunkScores:
            stop = min(start + chunk, count)
            request = build_score_request(images[start:stop], prompts[start:stop], metadata[start:stop],
                                          branch[start:stop], first_index=start,
                                          request_id=f"{request_id}-{start}", deadline_ms=self._deadline_ms())
            body, _ = await self._with_retries(request.SerializeToString(), deadline, attempts)
            return parse_score_response(body, self.spec.name, start, stop - start)

        tasks = [asyncio.ensure_future(score_chunk(s)) for s in starts]
        try:
            chunks = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one chunk failed: the step fails, so stop retrying the others
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        values = np.concatenate([c.values for c in chunks]) if chunks else np.zeros(0)
        components: dict[str, np.ndarray] = {}
        for start, part in zip(starts, chunks):
            for name, column in part.components.items():
                components.setdefault(name, np.full(count, np.nan))[start:start + len(column)] = column
        model = next((c.model for c in chunks if c.model is not None), None)
        if model is None:
            model = await self.info()
        if self.spec.component is not None:
            values = self._component_values(components, model, count)
        return RewardScores(name=self.spec.name, values=values, components=components,
                            model_info=model_info_dict(model), requests=len(chunks),
                            retries=attempts.failed,
                            queue_ms=max((c.queue_ms for c in chunks), default=0.0),
                            compute_ms=sum(c.compute_ms for c in chunks))

    # ----- internals -----
    def _component_values(self, components: dict[str, np.ndarray], model: reward_pb2.ModelInfo,
                          count: int) -> np.ndarray:
        """The spec's component as the reward values (NaN where an item lacks it: unset), or a clear error."""
        name = self.spec.component
        if name not in model.components:
            announced = ", ".join(model.components) or "none"
            raise RewardServiceError(f"reward {self.spec.name!r}: component {name!r} is not one the service at "
                                     f"{', '.join(self.spec.urls)} announces (its components: {announced})")
        return components.get(name, np.full(count, np.nan))

    def _deadline_ms(self) -> int:
        """The per-request deadline the service should enforce (its default when the reward sets no timeout)."""
        return int(self.spec.timeout_s * 1000) if self.spec.timeout_s else 0

    def _chunk_size(self, count: int) -> int:
        limits = []
        for replica in self._replicas:
            if replica.info is not None:
                limits += [n for n in (replica.info.max_batch_items, replica.info.max_request_items) if n > 0]
        return max(1, min(limits, default=max(count, 1)))

    def _pick(self) -> _Replica:
        """Least-busy healthy replica (ties round-robin); if all are cooling down, the one that recovers first."""
        turn = next(self._turn) % len(self._replicas)
        order = self._replicas[turn:] + self._replicas[:turn]
        now = asyncio.get_running_loop().time()
        healthy = [r for r in order if r.retry_at <= now]
        if not healthy:
            return min(order, key=lambda r: r.retry_at)
        return min(healthy, key=lambda r: r.in_flight)

    def _mark(self, replica: _Replica, ok: bool, retry_after: float | None = None) -> None:
        """Record the outcome of an attempt on a replica (for _pick's cool-down; Retry-After extends it)."""
        if ok:
            replica.failures, replica.retry_at = 0, 0.0
            return
        cool_down = max(backoff_s(self.policy, replica.failures, self._rng), retry_after or 0.0)
        replica.retry_at = asyncio.get_running_loop().time() + cool_down
        replica.failures += 1

    async def _read_info(self, replica: _Replica) -> None:
        response = await self._http.get(f"{replica.url}/v1/info", headers=self._headers, timeout=self._timeout)
        if response.status_code != 200:
            raise _RetryableStatus(response) if response.status_code in RETRYABLE_STATUS else \
                RewardServiceError(f"reward {self.spec.name!r}: GET {replica.url}/v1/info answered "
                                   f"{response.status_code}: {_error_text(response)}")
        replica.info = _parse_model_info(response)

    async def _attempt(self, body: bytes | None, replica: _Replica) -> httpx.Response | None:
        """One try against one replica: (re)read its info if needed, then POST the body (if any)."""
        replica.in_flight += 1
        try:
            async with replica.slots:
                if replica.info is None:
                    await self._read_info(replica)
                if body is None:
                    return None
                return await self._http.post(
                    f"{replica.url}/v1/score", content=body, timeout=self._timeout,
                    headers={**self._headers, "Content-Type": PROTOBUF_MEDIA_TYPE})
        finally:
            replica.in_flight -= 1

    async def _with_retries(self, body: bytes | None, deadline: float,
                            attempts: _Attempts) -> tuple[bytes, _Replica]:
        """POST body (or only read /v1/info when body is None) until success, a fatal error or the deadline."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            replica = self._pick()
            attempts.count += 1
            retry_after = None
            try:
                response = await self._attempt(body, replica)
            except httpx.TransportError as err:  # connection refused/reset, timeouts, protocol errors
                replica.info = None
                attempts.last_error = f"{replica.url}: {type(err).__name__}: {err or 'no detail'}"
            except _RetryableStatus as err:
                replica.info = None
                attempts.last_error = f"{replica.url}/v1/info: {err}"
                retry_after = retry_after_s(err.response.headers.get("retry-after"))
            else:
                if response is None:
                    self._mark(replica, ok=True)
                    return b"", replica
                if response.status_code == 200:
                    self._mark(replica, ok=True)
                    return response.content, replica
                detail = _error_text(response)
                if response.status_code not in RETRYABLE_STATUS:
                    raise RewardServiceError(f"reward {self.spec.name!r}: POST {replica.url}/v1/score answered "
                                             f"{response.status_code}: {detail}")
                if response.status_code == 503:
                    replica.info = None  # draining or restarting: read its info again when it is back
                attempts.last_error = f"{replica.url}/v1/score: HTTP {response.status_code}: {detail}"
                retry_after = retry_after_s(response.headers.get("retry-after"))
            self._mark(replica, ok=False, retry_after=retry_after)
            wait = backoff_s(self.policy, failures, self._rng)
            if retry_after is not None:
                wait = max(wait, retry_after)
            if any(r.retry_at <= loop.time() for r in self._replicas):
                wait = 0.0  # another replica is healthy: go there now (failing ones cool down, so this ends)
            failures += 1
            attempts.failed += 1
            if loop.time() + wait > deadline:
                raise RewardUnavailableError(self.spec.name, self.spec.urls, attempts.last_error, attempts.count,
                                             loop.time() - attempts.started)
            await asyncio.sleep(wait)


class _RetryableStatus(Exception):
    """A retryable HTTP status from /v1/info (carried out of _attempt to the retry loop)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {_error_text(response)}")
        self.response = response


def _parse_model_info(response: httpx.Response) -> reward_pb2.ModelInfo:
    """ModelInfo from a /v1/info reply in either encoding."""
    content_type = response.headers.get("content-type", "")
    try:
        if "json" in content_type:
            return json_format.Parse(response.text, reward_pb2.ModelInfo(), ignore_unknown_fields=True)
        return reward_pb2.ModelInfo.FromString(response.content)
    except (json_format.ParseError, DecodeError) as err:
        raise RewardServiceError(f"/v1/info reply is not a ModelInfo ({content_type}): {err}") from err


def _error_text(response: httpx.Response) -> str:
    """A short, readable error from a non-2xx reply (ErrorResponse in either encoding, else the text)."""
    try:
        if "json" in response.headers.get("content-type", ""):
            return response.text[:300]
        error = reward_pb2.ErrorResponse.FromString(response.content)
        if error.code or error.message:
            return f"{error.code}: {error.message}" + (f" (field {error.field})" if error.field else "")
    except DecodeError:
        pass
    return response.text[:300]
