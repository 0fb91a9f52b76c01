"""Where a run's numbers go: metrics.jsonl (one JSON object per record), TensorBoard scalars, a progress bar.

Only the main rank writes (a `RunLogger` built with `enabled=False` swallows everything). Each JSONL record has
`kind` ("step", "epoch", "eval", "reward_config", "resume", ...) and `step` (optimizer steps done), plus its
values; nested dicts are kept in the JSONL and flattened with '/' for TensorBoard. Lines are flushed as written,
so a killed run leaves every record up to the kill.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def flatten_scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict -> {'a/b': float} for every finite int/float leaf (other leaves are skipped)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a missing value reads as null
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunLogger:
    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 progress_bar: bool = True, progress_total: int = 0, progress_initial: int = 0,
                 progress_unit: str = "step"):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.jsonl = None
        if not enabled:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        if progress_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=progress_total, initial=progress_initial, desc="train", unit=progress_unit,
                            dynamic_ncols=True, unit_scale=progress_unit != "step")

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One JSONL line and its scalars in TensorBoard under `<kind>/...`."""
        if not self.enabled:
            return
        line = {"kind": kind, "step": step, "time": time.time(), **_json_safe(values)}
        self.jsonl.write(json.dumps(line, sort_keys=False) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in flatten_scalars(values).items():
                self.writer.add_scalar(f"{kind}/{name}", value, step)

    def image(self, tag: str, step: int, image_hwc) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def progress(self, amount: int, postfix: dict[str, float] | None = None) -> None:
        """Advance the bar by `amount` of its unit (optimizer steps, or model evaluations under an NFE budget)."""
        if self.bar is not None:
            self.bar.update(amount)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        """A human-readable line that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
