"""Shared pieces of the trainer's process-level tests: tiny models on disk, reward services on chosen ports, real
`python -m trainer` subprocesses and their metrics. Holds no tests itself."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.service_process import REPO_ROOT, RunningService, free_port, wait_ready

__test__ = False

# every child process uses one thread: the machine has 2 cores shared by many test runs
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}

PROMPTS = ["a red cat", "a photo of a dog", "the blue sky", "two green apples", "a yellow car on a road",
           "a small house"]


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    from trainer.models.tiny_sd3 import build_tiny_sd3
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "sd3")


@pytest.fixture(scope="session")
def tiny_pickscore_dir(tmp_path_factory) -> Path:
    from services.pickscore.tiny_model import build_tiny_pickscore
    directory = tmp_path_factory.mktemp("tiny-pickscore") / "pickscore"
    build_tiny_pickscore(directory)
    return directory


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "tag": "test", "index": i}) + "\n"
                            for i, p in enumerate(PROMPTS)))
    return path


def trainer_flags(sd3_dir: Path, prompt_file: Path, output_dir: Path, *, steps: int = 2, **overrides) -> list[str]:
    """Flags of a tiny, fast run: 2 groups of 4 images, 4 sampling steps at 64 px, one optimizer step per epoch."""
    flags = {"model-kind": "sd3", "model-path": str(sd3_dir), "resolution": "64", "lora-rank": "4",
             "lora-alpha": "8", "prompt-file": str(prompt_file), "groups-per-epoch": "2", "group-size": "4",
             "num-steps": "4", "guidance-scale": "1", "train-batch-size": "4", "grad-accumulation": "100",
             "steps": str(steps), "output-dir": str(output_dir), "image-interval": "1", "seed": "7",
             "algo-options": json.dumps({"kl_mode": "exact"})}
    flags.update({k.replace("_", "-"): str(v) for k, v in overrides.items()})
    return [item for key, value in flags.items() for item in (f"--{key}", value)] + ["--no-progress-bar"]


def start_trainer(flags: list[str], log_path: Path, launcher: list[str] | None = None) -> subprocess.Popen:
    command = (launcher or [sys.executable, "-m"]) + ["trainer", *flags]
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **CHILD_ENV}, stdout=log_file,
                                stderr=subprocess.STDOUT)


def run_trainer(flags: list[str], log_path: Path, timeout_s: float = 300.0) -> None:
    """Run `python -m trainer` to completion; fail with its log when it does not exit 0."""
    process = start_trainer(flags, log_path)
    try:
        code = process.wait(timeout_s)
    finally:
        stop_process(process)
    assert code == 0, f"trainer exited {code}:\n{log_path.read_text(errors='replace')[-6000:]}"


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def read_metrics(output_dir: Path, kind: str | None = None) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def wait_until(predicate: Callable[[], bool], process: subprocess.Popen, log_path: Path, timeout_s: float = 240.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"trainer exited ({process.returncode}) before {what}:\n"
                                 f"{log_path.read_text(errors='replace')[-6000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text(errors='replace')[-6000:]}")


def start_service_on_port(module: str, port: int, args: list[str], log_path: Path,
                          ready_timeout_s: float = 120.0) -> RunningService:
    """A reward service process on a given port (so a test can restart it at the same URL)."""
    command = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **CHILD_ENV}, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    service = RunningService(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_ready(service.url, process, log_path, ready_timeout_s)
    except BaseException:
        service.process.kill()
        service.process.wait()
        raise
    return service


@contextlib.contextmanager
def brightness_service(log_dir: Path, port: int | None = None) -> Iterator[RunningService]:
    """The deterministic test scorer (mean brightness) as a real service process."""
    port = port or free_port()
    service = start_service_on_port("tests.support.test_scorers", port, [], log_dir / f"brightness-{port}.log")
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGKILL)
            service.process.wait()
