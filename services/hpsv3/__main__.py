"""`python -m services.hpsv3 --model Qwen/Qwen2-VL-7B-Instruct --checkpoint MizzenAI/HPSv3`: serve HPSv3.

Flags fall back to `HPSV3_*` environment variables (HPSV3_MODEL, HPSV3_CHECKPOINT, HPSV3_DEVICE, HPSV3_DTYPE), then
to the defaults; the shared service flags (`--port`, `--max-batch-items`, ...) come from services.common.settings.
"""
from __future__ import annotations

import argparse
import os
import sys

from services.common.serve import run_service
from services.hpsv3.scorer import HPSv3Config, scorer_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HPSv3Config()
    group = parser.add_argument_group("HPSv3 weights")
    for name, help_text in (("model", "base model directory or hub id (Qwen2-VL-7B-Instruct)"),
                            ("checkpoint", "HPSv3.safetensors, a directory holding it, or a hub repo id"),
                            ("device", "cuda, cuda:N, cpu or auto"),
                            ("dtype", "bfloat16, float16, float32 or auto (bf16 on GPU)")):
        default = os.environ.get(f"HPSV3_{name.upper()}", getattr(defaults, name))
        group.add_argument(f"--{name}", default=default, help=f"{help_text} (env HPSV3_{name.upper()}; "
                                                              f"default {default})")


if __name__ == "__main__":
    sys.exit(run_service(scorer_from_arguments, name="hpsv3", add_arguments=add_arguments,
                         description="HPSv3 reward service (Qwen2-VL-7B-Instruct + (mu, sigma) head)"))
