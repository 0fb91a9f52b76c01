"""Prometheus metrics of a reward service, on a registry of its own (so several apps can live in one process).

Exposed at GET /metrics: request, queue and inference durations, batch size, queue depth, items by outcome and
requests in flight and rejections by reason. The per-request queue/compute times also go out as `x-queue-time` / `x-compute-time` headers
(milliseconds).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_ITEMS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """The metric families of one service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "reward_request_duration_seconds", "Time from request received to reply sent, seconds.",
            ["status"], buckets=_SECONDS, registry=self.registry)
        self.queue_seconds = Histogram(
            "reward_queue_duration_seconds", "Time an item waited in the queue before its batch started, seconds.",
            buckets=_SECONDS, registry=self.registry)
        self.inference_seconds = Histogram(
            "reward_inference_duration_seconds", "Time of one batch forward (prepare + score), seconds.",
            buckets=_SECONDS, registry=self.registry)
        self.batch_items = Histogram(
            "reward_batch_size_items", "Items in one forward of the scorer.",
            buckets=_BATCH_ITEMS, registry=self.registry)
        self.queue_depth = Gauge(
            "reward_queue_depth_items", "Items admitted and waiting for a forward.", registry=self.registry)
        self.in_flight = Gauge(
            "reward_requests_in_flight", "Score requests being handled now.", registry=self.registry)
        self.items = Counter(
            "reward_items_total", "Items answered, by outcome (scored, item_error).",
            ["outcome"], registry=self.registry)
        self.rejections = Counter(
            "reward_rejections_total", "Requests refused, by reason (queue_full, deadline_exceeded, ...).",
            ["reason"], registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
