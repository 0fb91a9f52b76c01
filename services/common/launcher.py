"""Start a reward service as a subprocess on 127.0.0.1, wait until it is ready, and stop it afterwards.

    with running_service("services.geneval", "--detector", "shapes") as service:
        httpx.post(service.url + "/v1/score", ...)

Runs `python -m <module> --host 127.0.0.1 --port <free port> <args>` (from `cwd`, default the repository root),
waits for /health/ready (failing fast with the process's log if it exits or never turns ready), yields a
`RunningService`, then sends SIGTERM (drain) and kills it if it does not exit in time. Its stdout+stderr go to a log
file. `exit_on_sigterm()` makes a SIGTERM of the calling process run that cleanup too. Used by the shapes demo, the
benchmarks and the tests that need a real service process.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding services/


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningService:
    """A service subprocess that answered /health/ready."""

    url: str  # base URL, e.g. http://127.0.0.1:40123
    process: subprocess.Popen  # the `python -m ...` process
    log_path: Path  # its combined stdout + stderr

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (drain), wait for exit, kill when it hangs; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) in this process, so `running_service` blocks (and subprocess.run, which kills
    its child on any exception) clean up: a terminated demo or benchmark leaves no orphan service behind."""
    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _exit)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll GET url/health/ready until 200; raise with the process log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with status {process.returncode} before ready:\n"
                               f"{log_path.read_text(errors='replace')}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health/ready", timeout=2.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"service not ready after {timeout_s} s:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def running_service(module: str, *args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 120.0,
                    stop_timeout_s: float = 30.0, log_dir: str | Path | None = None) -> Iterator[RunningService]:
    """Run `python -m module` on 127.0.0.1 with a free port until the block ends; yields a RunningService."""
    port = free_port()
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="reward-service-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{port}.log"
    command = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
    service = RunningService(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_ready(service.url, process, log_path, ready_timeout_s)
        yield service
    finally:
        service.terminate(stop_timeout_s)
