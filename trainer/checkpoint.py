"""Checkpoints that resume a run exactly, written atomically, with no pickle.

One checkpoint is a directory `<output_dir>/checkpoints/step-XXXXXXXX/` holding:
- `lora.safetensors`       the trainable LoRA weights (`FlowModel.lora_state_dict()` keys)
- `ema.safetensors`        the EMA of the LoRA weights (when EMA is on)
- `optimizer.safetensors`  every tensor of the optimizer state (`state/<param index>/<name>`), and
  `optimizer.json`         its param_groups and the non-tensor state entries
- `rng.safetensors` + `rng.json`  torch CPU (+ CUDA) RNG, the loop's torch.Generators, numpy and python RNG states
- `algorithm.safetensors` + state fields in `state.json`: the algorithm's own state (advantage/stat tracker)
- `state.json`             step, epoch, data position, cost counters, reward config in use, the run config
- `lora_diffusers/`        the same LoRA written by `FlowModel.save_lora` (loadable by diffusers pipelines)
- `manifest.json`          written last: the sha256 and size of every file above

Writing: everything goes to a hidden temp directory next to the final one; each file is fsynced, the manifest
last, then the directory is renamed into place and the parent directory fsynced. A write killed at any point
leaves either no `step-*` directory or a complete one; `latest_valid_checkpoint` also re-checks every hash, so a
corrupted or truncated checkpoint is skipped in favour of the previous one, never loaded.

Tensors are stored with safetensors and everything else as JSON; nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREFIX = "step-"


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped."""

    step: int  # optimizer steps done
    epoch: int  # epochs done
    lora: dict[str, torch.Tensor]  # trainable LoRA weights
    optimizer: dict[str, Any]  # torch optimizer.state_dict()
    ema: dict[str, torch.Tensor] | None = None  # EMA shadow weights, None when EMA is off
    data: dict[str, Any] = field(default_factory=dict)  # PromptSchedule.state_dict()
    algorithm_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor part of the algorithm state
    algorithm_json: dict[str, Any] = field(default_factory=dict)  # JSON part of the algorithm state
    generators: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> torch.Generator.get_state()
    rng: dict[str, Any] = field(default_factory=dict)  # capture_global_rng() output
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able run info (cost, config, reward config)


# ----------------------------------------------------------------------------------------------- RNG states

def capture_global_rng() -> dict[str, Any]:
    """torch CPU/CUDA, numpy and python RNG states as tensors + JSON-able values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_meta": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{index}"] = cuda_state
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if torch.cuda.is_available():
        cuda_states = [state[k] for k in sorted(state) if k.startswith("torch_cuda_")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------------------- optimizer state

def _split_optimizer_state(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in opt_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------ file plumbing

def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


# ------------------------------------------------------------------------------------------- save / load

def save_checkpoint(root: str | Path, state: TrainingState, *, save_lora: Callable[[str], None] | None = None,
                    keep: int = 3) -> Path:
    """Write `state` atomically as `root/step-XXXXXXXX`; keep only the `keep` newest checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)
    tmp = root / f".tmp-{checkpoint_name(state.step)}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        _save_tensors(tmp / "lora.safetensors", state.lora)
        if state.ema is not None:
            _save_tensors(tmp / "ema.safetensors", state.ema)
        opt_tensors, opt_meta = _split_optimizer_state(state.optimizer)
        _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        _write_json(tmp / "optimizer.json", opt_meta)
        rng_tensors = {k: v for k, v in state.rng.items() if isinstance(v, torch.Tensor)}
        rng_tensors.update({f"generator/{k}": v for k, v in state.generators.items()})
        _save_tensors(tmp / "rng.safetensors", rng_tensors)
        _write_json(tmp / "rng.json", {k: v for k, v in state.rng.items() if not isinstance(v, torch.Tensor)})
        _save_tensors(tmp / "algorithm.safetensors", state.algorithm_tensors)
        _write_json(tmp / "state.json", {
            "format": FORMAT_VERSION, "step": state.step, "epoch": state.epoch, "data": state.data,
            "algorithm": state.algorithm_json, "has_ema": state.ema is not None, "extra": state.extra})
        if save_lora is not None:
            save_lora(str(tmp / "lora_diffusers"))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for path in files:
            _fsync_file(path)
        manifest = {"format": FORMAT_VERSION, "step": state.step,
                    "files": {str(p.relative_to(tmp)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                              for p in files}}
        _write_json(tmp / MANIFEST, manifest)
        _fsync_file(tmp / MANIFEST)
        for directory in sorted({p.parent for p in files} | {tmp}, key=lambda d: -len(d.parts)):
            _fsync_dir(directory)
        if final.exists():  # the same step written again (a resumed run that re-did it): replace it whole
            stale = root / f".old-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    if keep < 1:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_unfinished_writes(root: str | Path) -> int:
    """Delete temp directories left by killed writes (run this on the writing rank before training)."""
    root = Path(root)
    removed = 0
    if root.is_dir():
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed += 1
        for stale in root.glob(".old-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return removed


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under root, oldest first (by step number)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a loadable checkpoint (None when every file is present with its recorded hash)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"manifest unreadable: {err}"
    if manifest.get("format") != FORMAT_VERSION:
        return f"format {manifest.get('format')} is not {FORMAT_VERSION}"
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} missing"
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            return f"{name} does not match its recorded hash"
    return None


def latest_valid_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under root that passes `checkpoint_problem`; invalid newer ones are logged, skipped."""
    for candidate in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log.warning("skipping checkpoint %s: %s", candidate, problem)
    return None


def load_checkpoint(path: str | Path) -> TrainingState:
    """Read a checkpoint (verifying it first); tensors on the CPU."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is not valid: {problem}")
    meta = json.loads((path / "state.json").read_text())
    rng_tensors = load_file(str(path / "rng.safetensors"))
    rng: dict[str, Any] = {k: v for k, v in rng_tensors.items() if not k.startswith("generator/")}
    rng.update(json.loads((path / "rng.json").read_text()))
    generators = {k[len("generator/"):]: v for k, v in rng_tensors.items() if k.startswith("generator/")}
    return TrainingState(
        step=meta["step"], epoch=meta["epoch"],
        lora=load_file(str(path / "lora.safetensors")),
        optimizer=_join_optimizer_state(load_file(str(path / "optimizer.safetensors")),
                                        json.loads((path / "optimizer.json").read_text())),
        ema=load_file(str(path / "ema.safetensors")) if meta["has_ema"] else None,
        data=meta["data"], algorithm_tensors=load_file(str(path / "algorithm.safetensors")),
        algorithm_json=meta["algorithm"], generators=generators, rng=rng, extra=meta["extra"])
