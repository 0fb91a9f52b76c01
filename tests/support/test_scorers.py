"""A small deterministic Scorer for serving tests, runnable as a real service process.

`BrightnessScorer`: value = mean pixel brightness in [0, 1]; an optional sleep per forward makes batching, queue-full,
deadline and drain behaviour observable; every output carries `forward_index` (which forward scored it) and
`batch_items` (how many items rode in that forward), so tests can count coalescing from the replies alone.
A prompt of exactly "raise" makes its whole forward raise (a scorer crash); `fail_warmup` makes the first forward
(the warm-up) raise.

    python -m tests.support.test_scorers --forward-sleep-ms 200 --port 8123
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from services.common.scorer import Scorer, ScorerInfo, ScorerInput, ScorerOutput

__test__ = False  # a helper module, not a test module


class BrightnessScorer(Scorer):
    """value = mean(image) / 255; sleeps `forward_sleep_s` per forward; counts forwards."""

    def __init__(self, forward_sleep_s: float = 0.0, setup_sleep_s: float = 0.0, fail_warmup: bool = False) -> None:
        self.forward_sleep_s = forward_sleep_s  # simulated compute time of one forward, s
        self.setup_sleep_s = setup_sleep_s  # simulated weight-loading time, s
        self.fail_warmup = fail_warmup  # when True the first forward (the warm-up) raises
        self.forwards = 0  # forwards run so far (the warm-up forward included)
        self.items_scored = 0  # items scored so far
        self._lock = threading.Lock()

    def setup(self) -> None:
        time.sleep(self.setup_sleep_s)

    def score(self, items: list[ScorerInput]) -> list[ScorerOutput]:
        with self._lock:
            self.forwards += 1
            self.items_scored += len(items)
            forward_index = self.forwards
        time.sleep(self.forward_sleep_s)
        if self.fail_warmup and forward_index == 1:
            raise RuntimeError("warm-up forward failed on purpose (--fail-warmup)")
        if any(item.prompt == "raise" for item in items):
            raise RuntimeError("scorer crashed on purpose (prompt 'raise')")
        return [ScorerOutput(value=float(np.mean(item.image)) / 255.0,
                             components={"forward_index": float(forward_index), "batch_items": float(len(items))})
                for item in items]

    def info(self) -> ScorerInfo:
        return ScorerInfo(name="brightness", model="tests.support.test_scorers.BrightnessScorer", revision="1",
                          score_min=0.0, score_max=1.0, description="mean pixel brightness / 255 (a test scorer)",
                          components=["forward_index", "batch_items"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forward-sleep-ms", type=float, default=0.0, help="simulated time of one forward, ms")
    parser.add_argument("--setup-sleep-ms", type=float, default=0.0, help="simulated weight-loading time, ms")
    parser.add_argument("--fail-warmup", action="store_true", help="make the warm-up forward raise")


def build(args: argparse.Namespace) -> BrightnessScorer:
    return BrightnessScorer(args.forward_sleep_ms / 1000.0, args.setup_sleep_ms / 1000.0, args.fail_warmup)


if __name__ == "__main__":
    from services.common.serve import run_service

    raise SystemExit(run_service(build, name="brightness", add_arguments=add_arguments,
                                 description="a deterministic test scorer (mean brightness)"))
