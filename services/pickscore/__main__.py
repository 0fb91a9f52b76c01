"""`python -m services.pickscore --model PATH_OR_ID --processor PATH_OR_ID --port N`: serve PickScore."""
from __future__ import annotations

import argparse
import os

from services.common.serve import run_service
from services.pickscore.scorer import DEFAULT_MODEL, DEFAULT_PROCESSOR, PickScoreScorer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PickScore")
    group.add_argument("--model", default=os.environ.get("PICKSCORE_MODEL", DEFAULT_MODEL),
                       help=f"CLIPModel path or hub id (env PICKSCORE_MODEL; default {DEFAULT_MODEL})")
    group.add_argument("--processor", default=os.environ.get("PICKSCORE_PROCESSOR", DEFAULT_PROCESSOR),
                       help=f"processor path or hub id (env PICKSCORE_PROCESSOR; default {DEFAULT_PROCESSOR}; use the "
                            "model path for a directory that holds both)")
    group.add_argument("--device", default=os.environ.get("PICKSCORE_DEVICE", "auto"),
                       help="auto (cuda when available), cpu, cuda, cuda:N")
    group.add_argument("--dtype", default=os.environ.get("PICKSCORE_DTYPE", "auto"),
                       help="auto (float16 on GPU, float32 on CPU), float32, float16, bfloat16")


def build(args: argparse.Namespace) -> PickScoreScorer:
    return PickScoreScorer(model=args.model, processor=args.processor, device=args.device, dtype=args.dtype)


def main(argv: list[str] | None = None) -> int:
    return run_service(build, argv, name="pickscore", add_arguments=add_arguments,
                       description="PickScore reward service (reward.v1 schema)")


if __name__ == "__main__":
    raise SystemExit(main())
