"""The FastAPI app of a reward service: `create_app(scorer, settings)` serves any `Scorer` behind the one schema.

Routes: POST /v1/score (JSON or protobuf by Content-Type; reply by Accept), GET /v1/info, GET /health/live,
GET /health/ready (200 only after setup + a warm-up forward; 503 while loading, failed or draining), GET /metrics,
OpenAPI at /docs. Status codes: 400 malformed (naming the field), 401 bad/missing bearer key, 413 too many items or
bytes, 415 wrong Content-Type, 422 when no item of the request is usable, 429 queue full (Retry-After), 503 not
ready / draining, 504 deadline passed. One bad item fails that item only (its ItemScore.error), not the request.
No torch here.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.concurrency import run_in_threadpool

from protos.reward.v1 import reward_pb2
from services.common.batcher import DeadlineExceededError, DrainingError, DynamicBatcher, ItemResult, QueueFullError
from services.common.codec import (
    JSON, MEDIA_TYPES, ItemRejected, RequestError, decode_item, encode_message, parse_score_request, reply_format,
    wire_format_of,
)
from services.common.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from services.common.metrics import ServiceMetrics
from services.common.scorer import Scorer, ScorerInput, ScorerOutput
from services.common.settings import ServiceSettings

log = logging.getLogger("reward.app")

LOADING, READY, FAILED, DRAINING = "loading", "ready", "failed", "draining"


@dataclass
class ServiceState:
    """Mutable state of one running service."""

    scorer: Scorer  # the reward model
    settings: ServiceSettings  # limits and network settings
    metrics: ServiceMetrics  # Prometheus metric families
    setup_done: bool  # True when scorer.setup() already ran (serve.py runs it before binding, to fail fast)
    phase: str = LOADING  # loading -> ready -> draining; or failed
    failure: str = ""  # why setup or warm-up failed
    model_info: reward_pb2.ModelInfo | None = None  # reported in /v1/info and in every reply
    batcher: DynamicBatcher | None = None
    in_flight: int = 0  # /v1/score requests being handled now
    warmup_task: asyncio.Task | None = field(default=None, repr=False)

    async def start_up(self) -> None:
        """Load weights (unless done), run a warm-up forward through the batcher, then turn ready."""
        try:
            if not self.setup_done:
                await asyncio.to_thread(self.scorer.setup)
                self.setup_done = True
            self.model_info = model_info_of(self.scorer, self.settings)
            assert self.batcher is not None
            results = await self.batcher.submit(self.scorer.warmup_inputs(), time.monotonic() + 3600.0)
            failed = [r.output.error for r in results if r.output.error]
            if failed:
                raise RuntimeError(f"warm-up forward failed: {failed[0]}")
            if self.phase == LOADING:
                self.phase = READY
                log.info("ready: %s (%s on %s)", self.model_info.model, self.model_info.dtype, self.model_info.device)
        except Exception as error:  # noqa: BLE001 - reported by /health/ready and the log, never silently
            self.phase = FAILED
            self.failure = f"{type(error).__name__}: {error}"
            log.error("start-up failed: %s", self.failure)

    async def drain(self) -> bool:
        """Readiness goes 503, new work is refused, admitted work finishes; True when it all finished in time."""
        if self.phase != FAILED:
            self.phase = DRAINING
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        finished = self.in_flight == 0
        if self.batcher is not None:
            finished = await self.batcher.drain(max(0.0, deadline - time.monotonic())) and finished
        log.info("drained (%s)", "all work finished" if finished else "drain timeout: work abandoned")
        return finished


def model_info_of(scorer: Scorer, settings: ServiceSettings) -> reward_pb2.ModelInfo:
    """The schema's ModelInfo from the scorer's ScorerInfo and the service limits."""
    info = scorer.info()
    return reward_pb2.ModelInfo(
        name=info.name, model=info.model, revision=info.revision, dtype=info.dtype, device=info.device,
        score_min=info.score_min, score_max=info.score_max, max_batch_items=settings.max_batch_items,
        max_request_items=settings.max_request_items, description=info.description, components=info.components,
    )


def _decode_request(body: bytes, fmt: str, settings: ServiceSettings
                    ) -> tuple[reward_pb2.ScoreRequest, list[ScorerInput], dict[int, ItemRejected]]:
    """Parse the body and decode every item (in a worker thread); bad items are set aside, not fatal."""
    request = parse_score_request(body, fmt)
    if len(request.items) == 0:
        raise RequestError(400, "invalid_request", "items: the request has no items", "items")
    limit = min(settings.max_request_items, settings.max_queue_items)  # a request the queue cannot hold never fits
    if len(request.items) > limit:
        raise RequestError(413, "too_many_items", f"items: {len(request.items)} items exceed max_request_items="
                           f"{limit}; split the request", "items")
    inputs: list[ScorerInput] = []
    rejected: dict[int, ItemRejected] = {}
    for index, item in enumerate(request.items):
        try:
            inputs.append(decode_item(item, index, settings.max_image_pixels))
        except ItemRejected as error:
            rejected[index] = error
    if not inputs:
        first = rejected[min(rejected)]
        raise RequestError(422, first.code, first.message, first.field)
    return request, inputs, rejected


def _item_score(index: int, item: reward_pb2.ScoreItem, output: ScorerOutput | None,
                rejected: ItemRejected | None) -> reward_pb2.ItemScore:
    score = reward_pb2.ItemScore(item_id=item.item_id)
    if item.HasField("branch"):
        score.branch.CopyFrom(item.branch)
    if rejected is not None:
        score.error.code, score.error.message = rejected.code, rejected.message
        return score
    assert output is not None
    if output.error:
        score.error.code, score.error.message = "scorer_error", f"items[{index}]: {output.error}"
    elif output.value is None or not math.isfinite(output.value):
        score.error.code, score.error.message = "scorer_error", f"items[{index}]: non-finite score {output.value!r}"
    else:
        score.value = float(output.value)
        for name, part in output.components.items():
            if math.isfinite(part):
                score.components[name] = float(part)
        if output.detail:
            json_format.ParseDict(output.detail, score.detail)
    return score


def _reply(message, fmt: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_message(message, fmt), status_code=status, media_type=MEDIA_TYPES[fmt], headers=headers)


_SCORE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "description": "reward.v1.ScoreRequest, proto3 JSON "
                                            "(bytes as base64); see protos/examples/*.json"}},
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary",
                                                  "description": "serialised reward.v1.ScoreRequest"}},
        },
    },
    "responses": {
        "200": {"description": "reward.v1.ScoreResponse (JSON or protobuf by Accept); headers x-queue-time and "
                               "x-compute-time in ms"},
        "4XX": {"description": "reward.v1.ErrorResponse naming the offending field"},
        "5XX": {"description": "reward.v1.ErrorResponse (503 not ready/draining, 504 deadline exceeded)"},
    },
}


def create_app(scorer: Scorer, settings: ServiceSettings | None = None, *, setup_done: bool = False) -> FastAPI:
    """A FastAPI app serving `scorer`. Set `setup_done` when `scorer.setup()` already ran."""
    settings = settings or ServiceSettings()
    state = ServiceState(scorer=scorer, settings=settings, metrics=ServiceMetrics(), setup_done=setup_done)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher = DynamicBatcher(scorer, settings.max_batch_items, settings.max_wait_ms,
                                       settings.max_queue_items, state.metrics)
        state.batcher.start()
        state.warmup_task = asyncio.create_task(state.start_up())
        try:
            yield
        finally:
            if not state.warmup_task.done():
                state.warmup_task.cancel()
            if state.phase != DRAINING or not state.batcher.closing:
                await state.drain()

    app = FastAPI(title="reward service", version="1", lifespan=lifespan,
                  description="A reward model behind the reward.v1 schema (protos/reward/v1/reward.proto).")
    app.state.service = state

    def authorised(request: Request) -> bool:
        if not settings.api_key:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.api_key.encode())

    def unauthorised(fmt: str) -> Response:
        state.metrics.rejections.labels("unauthorised").inc()
        error = reward_pb2.ErrorResponse(code="unauthorised", message="missing or wrong bearer API key",
                                         field="Authorization")
        return _reply(error, fmt, 401, {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        too_big = RequestError(413, "request_too_large", f"body exceeds max_request_bytes={limit}", "body")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/score", openapi_extra=_SCORE_OPENAPI, summary="Score images against prompts")
    async def score(request: Request) -> Response:
        started = time.monotonic()
        fmt_in = wire_format_of(request.headers.get("content-type"))
        fmt_out = reply_format(request.headers.get("accept"), fmt_in)
        state.in_flight += 1
        state.metrics.in_flight.inc()
        status = 200
        try:
            if not authorised(request):
                status = 401
                return unauthorised(fmt_out)
            response, headers = await _score(request, fmt_in, started)
            return _reply(response, fmt_out, 200, headers)
        except RequestError as error:
            status = error.status
            state.metrics.rejections.labels(error.code).inc()
            headers = {"Retry-After": "1"} if status == 503 else None
            return _reply(error.to_proto(), fmt_out, status, headers)
        except QueueFullError as error:
            status = 429
            state.metrics.rejections.labels("queue_full").inc()
            message = f"queue full ({state.batcher.queued_items} items waiting); retry after {error.retry_after_s} s"
            return _reply(reward_pb2.ErrorResponse(code="queue_full", message=message), fmt_out, 429,
                          {"Retry-After": str(error.retry_after_s)})
        except DeadlineExceededError:
            status = 504
            state.metrics.rejections.labels("deadline_exceeded").inc()
            message = f"deadline of {(time.monotonic() - started) * 1000:.0f} ms passed before the items were scored"
            return _reply(reward_pb2.ErrorResponse(code="deadline_exceeded", message=message,
                                                   field="deadline_ms"), fmt_out, 504)
        except DrainingError:
            status = 503
            state.metrics.rejections.labels("draining").inc()
            return _reply(reward_pb2.ErrorResponse(code="draining", message="service is shutting down"),
                          fmt_out, 503, {"Retry-After": "1"})
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            state.metrics.request_seconds.labels(str(status)).observe(time.monotonic() - started)

    async def _score(request: Request, fmt_in: str | None, started: float
                     ) -> tuple[reward_pb2.ScoreResponse, dict[str, str]]:
        if state.phase == DRAINING:
            raise DrainingError()
        if state.phase != READY:
            raise RequestError(503, "not_ready", f"service is {state.phase}" + (f": {state.failure}" if state.failure
                                                                                 else ""))
        if fmt_in is None:
            raise RequestError(415, "unsupported_media_type", "Content-Type must be application/json or "
                               f"application/x-protobuf, got {request.headers.get('content-type')!r}", "Content-Type")
        body = await read_body(request)
        parsed, inputs, rejected = await run_in_threadpool(_decode_request, body, fmt_in, settings)
        deadline_ms = parsed.deadline_ms or settings.default_deadline_ms
        assert state.batcher is not None
        results: list[ItemResult] = await state.batcher.submit(inputs, started + deadline_ms / 1000.0)
        response = reward_pb2.ScoreResponse(request_id=parsed.request_id, model=state.model_info)
        outputs = iter(results)
        for index, item in enumerate(parsed.items):
            result = None if index in rejected else next(outputs)
            item_score = _item_score(index, item, result.output if result else None, rejected.get(index))
            response.scores.append(item_score)
            state.metrics.items.labels("item_error" if item_score.HasField("error") else "scored").inc()
        batches = {r.batch_id: r.compute_s for r in results}
        response.queue_ms = max(r.queue_s for r in results) * 1000.0
        response.compute_ms = sum(batches.values()) * 1000.0
        headers = {"x-queue-time": f"{response.queue_ms:.3f}", "x-compute-time": f"{response.compute_ms:.3f}"}
        branches = [f"{i.branch.group_id}/{i.branch.seed}/{i.branch.branch_step}/{i.branch.sample_id}"
                    for i in parsed.items[:8] if i.HasField("branch")]
        log.info("scored request_id=%r items=%d errors=%d batches=%d queue_ms=%.1f compute_ms=%.1f%s",
                 parsed.request_id, len(parsed.items), len(rejected), len(batches), response.queue_ms,
                 response.compute_ms, f" branches={branches}" if branches else "")
        return response, headers

    @app.get("/v1/info", summary="Model info (reward.v1.ModelInfo)")
    async def info(request: Request) -> Response:
        fmt_out = reply_format(request.headers.get("accept"), JSON)
        if not authorised(request):
            return unauthorised(fmt_out)
        if state.model_info is None:
            return _reply(reward_pb2.ErrorResponse(code="not_ready", message=f"service is {state.phase}"),
                          fmt_out, 503, {"Retry-After": "1"})
        return _reply(state.model_info, fmt_out)

    @app.get("/health/live", summary="The process answers")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "live"})

    @app.get("/health/ready", summary="Ready to score (weights loaded, warm-up forward done, not draining)")
    async def ready() -> JSONResponse:
        body = {"status": state.phase}
        if state.failure:
            body["detail"] = state.failure
        return JSONResponse(body, status_code=200 if state.phase == READY else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return app
