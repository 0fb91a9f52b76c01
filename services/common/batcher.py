"""Item-level dynamic batching: items of concurrent requests are coalesced into forwards of the scorer.

A two-stage pipeline on the event loop, with the scorer's work in worker threads:
  collect  -> a batch forms when `max_batch_items` items wait, or when it could run and has waited `max_wait_ms`
              for company; it is then prepared (`Scorer.prepare`, e.g. resize + tokenise) in its own thread;
  forward  -> `Scorer.score_prepared` in another thread, one batch at a time.
"Could run" is when the forward stage is free, or, while a forward runs, just in time: its expected end minus the
expected prepare time (running averages). So the next batch is gathered and prepared while the current one runs,
yet a partial batch does not leave early while the forward is busy; under load batches fill up, and clients that
were split into cohorts by an early partial batch rejoin (the max_wait after the forward frees lets them). Admission is bounded (`max_queue_items`; beyond it `QueueFullError` with a Retry-After estimate);
an item whose request deadline passes while queued is dropped before it costs compute (`DeadlineExceededError`);
`drain()` refuses new work, finishes everything admitted, then stops. A scorer exception fails the items of that
batch (as item errors), never the service. No torch here.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.common.metrics import ServiceMetrics
from services.common.scorer import Scorer, ScorerInput, ScorerOutput

log = logging.getLogger("reward.batcher")


class QueueFullError(Exception):
    """The queue cannot admit the request's items now; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(Exception):
    """The request's deadline passed before all its items were scored."""


class DrainingError(Exception):
    """The service is draining (shutting down) and admits no new work."""


@dataclass
class ItemResult:
    """What one item got back from its batch."""

    output: ScorerOutput  # the scorer's output for this item
    queue_s: float  # time from admission to the start of its batch, s
    compute_s: float  # prepare + forward time of its batch, s
    batch_id: int  # sequence number of its batch (items of one batch share it)


@dataclass(eq=False)
class _Pending:
    item: ScorerInput
    future: asyncio.Future
    enqueued_at: float  # time.monotonic() at admission
    deadline: float  # time.monotonic() past which the item is not worth computing


@dataclass(eq=False)
class _Batch:
    pending: list[_Pending]
    started_at: float
    prepared: Any = None
    prepare_s: float = 0.0
    error: BaseException | None = None
    batch_id: int = 0
    items: list[ScorerInput] = field(default_factory=list)


class DynamicBatcher:
    """Coalesce items from concurrent `submit` calls into forwards of at most `max_batch_items` items."""

    def __init__(self, scorer: Scorer, max_batch_items: int, max_wait_ms: float, max_queue_items: int,
                 metrics: ServiceMetrics | None = None) -> None:
        self.scorer = scorer
        self.max_batch_items = max_batch_items  # most items per forward
        self.max_wait_s = max_wait_ms / 1000.0  # longest the oldest queued item waits for company, s
        self.max_queue_items = max_queue_items  # admission bound; beyond it QueueFullError
        self.metrics = metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._slot = asyncio.Semaphore(1)  # at most one batch prepared and waiting for the forward stage
        self._handoff: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-prepare")
        self._forward_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-forward")
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._batches = 0
        self._forward_ewma_s = 0.05  # running average of one forward's time, s
        self._prepare_ewma_s = 0.0  # running average of one prepare's time, s
        self._forward_busy_since: float | None = None  # time.monotonic() the running forward started; None if idle
        self._forward_free_since = 0.0  # time.monotonic() the forward stage last became free

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the collect and forward stages on the running event loop."""
        self._tasks = [asyncio.create_task(self._collect_loop(), name="reward-collect"),
                       asyncio.create_task(self._forward_loop(), name="reward-forward")]

    @property
    def queued_items(self) -> int:
        """Items admitted and not yet taken into a batch."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Admit nothing more, finish every admitted item, stop the stages. True when all work finished."""
        self._closing = True
        self._arrived.set()
        finished = True
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                finished = False
                task.cancel()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._forward_pool.shutdown(wait=False, cancel_futures=True)
        return finished

    # ---- admission -------------------------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Whole seconds after which the current queue should have cleared (at least 1)."""
        batches_ahead = self.queued_items / self.max_batch_items + 1
        return max(1, math.ceil(batches_ahead * (self._forward_ewma_s + self._prepare_ewma_s)))

    async def submit(self, items: list[ScorerInput], deadline: float) -> list[ItemResult]:
        """Queue the items and wait for their results (in order). `deadline` is a time.monotonic() instant."""
        if self._closing:
            raise DrainingError("service is draining")
        if self.queued_items + len(items) > self.max_queue_items:
            raise QueueFullError(self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = [_Pending(item, loop.create_future(), now, deadline) for item in items]
        self._queue.extend(pending)
        self._set_depth()
        self._arrived.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(p.future for p in pending)), deadline - now))
        except asyncio.TimeoutError as error:
            raise DeadlineExceededError("deadline exceeded") from error
        finally:
            self._forget(pending)

    def _forget(self, pending: list[_Pending]) -> None:
        """Remove a finished or abandoned request's items that are still queued."""
        if any(p in self._queue for p in pending):
            leftover = set(map(id, pending))
            self._queue = collections.deque(p for p in self._queue if id(p) not in leftover)
            self._set_depth()
        for p in pending:
            if not p.future.done():
                p.future.cancel()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    # ---- collect stage ---------------------------------------------------------------------------------------
    def _discard_stale(self) -> None:
        """Drop abandoned items, and fail items whose deadline passed, before they cost compute."""
        now = time.monotonic()
        kept: collections.deque[_Pending] = collections.deque()
        for p in self._queue:
            if p.future.done():
                continue
            if now >= p.deadline:
                p.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            kept.append(p)
        if len(kept) != len(self._queue):
            self._queue = kept
            self._set_depth()

    def _could_run_at(self) -> float:
        """When a batch prepared now could start its forward: now if the stage is free, else just in time."""
        if self._forward_busy_since is None:
            return self._forward_free_since
        return self._forward_busy_since + max(0.0, self._forward_ewma_s - self._prepare_ewma_s)

    async def _next_batch(self) -> list[_Pending] | None:
        """Wait for a full batch, or until a partial one could run and has waited max_wait for company;
        None once draining with nothing left."""
        while True:
            self._discard_stale()
            timeout: float | None = None
            if self._queue:
                leave_at = max(self._queue[0].enqueued_at, self._could_run_at()) + self.max_wait_s
                wait_left = leave_at - time.monotonic()
                if len(self._queue) >= self.max_batch_items or wait_left <= 0 or self._closing:
                    break
                timeout = wait_left
            elif self._closing:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        count = min(self.max_batch_items, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        self._set_depth()
        return batch

    async def _collect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slot.acquire()
            pending = await self._next_batch()
            if pending is None:
                await self._handoff.put(None)
                return
            self._batches += 1
            batch = _Batch(pending=pending, started_at=time.monotonic(), batch_id=self._batches,
                           items=[p.item for p in pending])
            try:
                batch.prepared = await loop.run_in_executor(self._prepare_pool, self.scorer.prepare, batch.items)
            except Exception as error:  # noqa: BLE001 - a scorer failure fails this batch's items only
                log.exception("prepare failed for batch %d", batch.batch_id)
                batch.error = error
            batch.prepare_s = time.monotonic() - batch.started_at
            self._prepare_ewma_s = 0.8 * self._prepare_ewma_s + 0.2 * batch.prepare_s
            await self._handoff.put(batch)

    # ---- forward stage ---------------------------------------------------------------------------------------
    async def _forward_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._handoff.get()
            if batch is None:
                return
            self._slot.release()  # the collect stage may now gather and prepare the next batch
            outputs: list[ScorerOutput] | None = None
            forward_started = time.monotonic()
            self._forward_busy_since = forward_started
            self._arrived.set()  # the collect stage re-plans its just-in-time point
            if batch.error is None:
                try:
                    outputs = await loop.run_in_executor(self._forward_pool, self.scorer.score_prepared,
                                                         batch.prepared, batch.items)
                    if len(outputs) != len(batch.items):
                        raise RuntimeError(f"scorer returned {len(outputs)} outputs for {len(batch.items)} items")
                except Exception as error:  # noqa: BLE001
                    log.exception("forward failed for batch %d", batch.batch_id)
                    batch.error = error
                    outputs = None
            forward_ended = time.monotonic()
            self._forward_busy_since = None
            self._forward_free_since = forward_ended
            self._arrived.set()  # the collect stage may now send a partial batch
            compute_s = batch.prepare_s + (forward_ended - forward_started)
            self._forward_ewma_s = 0.8 * self._forward_ewma_s + 0.2 * (forward_ended - forward_started)
            if self.metrics is not None:
                self.metrics.inference_seconds.observe(compute_s)
                self.metrics.batch_items.observe(len(batch.items))
            if outputs is None:
                message = f"scorer failed on this batch: {type(batch.error).__name__}: {batch.error}"
                outputs = [ScorerOutput(value=None, error=message) for _ in batch.items]
            for p, output in zip(batch.pending, outputs):
                queue_s = batch.started_at - p.enqueued_at
                if self.metrics is not None:
                    self.metrics.queue_seconds.observe(queue_s)
                if not p.future.done():
                    p.future.set_result(ItemResult(output, queue_s, compute_s, batch.batch_id))
