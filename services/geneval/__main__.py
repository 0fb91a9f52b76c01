"""`python -m services.geneval --detector shapes [--port N]`: serve the GenEval reward.

`--detector shapes` serves the classical shapes-world detector (no weights). `--detector mmdet` serves Mask2Former +
GenEval's CLIP colour classifier from services.geneval.mmdet_backend, imported only then (it needs mmdet, mmcv and,
for the CLIP colour classifier, transformers). That module provides `add_arguments(parser)` (its own flags: config,
checkpoint, CLIP weights, device) and `build_backend(args) -> DetectorBackend`.

Scoring flags: `--reward {partial,strict,graded,confidence}` picks the reply's value (strict and partial are always
components; graded and confidence add themselves), and GenEval's thresholds can be changed (the defaults are the
official ones). The shared service flags (`--host`, `--port`, `--max-batch-items`, ... or `REWARD_*` env) come from
services.common.settings.
"""
from __future__ import annotations

import argparse
import sys

from services.common.serve import run_service
from services.geneval.detections import DetectorBackend
from services.geneval.scorer import REWARDS, GenEvalScorer, GenEvalScorerConfig
from services.geneval.scoring import ScoringConfig

DETECTORS = ("shapes", "mmdet")  # detector backends that can be served


def _detector_choice(argv: list[str]) -> str:
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--detector", choices=DETECTORS, default="shapes")
    known, _ = probe.parse_known_args(argv)
    return known.detector


def add_arguments_for(detector: str):
    """The flag-adding hook for run_service: the scoring flags plus the chosen backend's own flags."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--detector", choices=DETECTORS, default="shapes",
                            help="detector backend: shapes (classical CV, no weights) or mmdet (Mask2Former + CLIP)")
        parser.add_argument("--reward", choices=REWARDS, default="partial",
                            help="the reply's value: partial credit (default, for training), strict 0/1, graded "
                                 "(partial credit averaged over the confidence threshold from 0 to GenEval's) or "
                                 "confidence (the mean detector confidence of the requested objects)")
        defaults = ScoringConfig()
        parser.add_argument("--threshold", type=float, default=defaults.threshold,
                            help="detection confidence threshold (all tags but counting)")
        parser.add_argument("--counting-threshold", type=float, default=defaults.counting_threshold,
                            help="detection confidence threshold for the counting tag")
        parser.add_argument("--max-objects", type=int, default=defaults.max_objects,
                            help="most detections kept per class")
        parser.add_argument("--nms-threshold", type=float, default=defaults.nms_threshold,
                            help="IoU at which a less confident box of the same class is dropped (1.0 = never)")
        parser.add_argument("--position-threshold", type=float, default=defaults.position_threshold,
                            help="position margin as a fraction of the summed object sizes")
        if detector == "mmdet":
            from services.geneval import mmdet_backend

            mmdet_backend.add_arguments(parser)

    return add_arguments


def build_backend(args: argparse.Namespace) -> DetectorBackend:
    """The detector backend the flags name."""
    if args.detector == "mmdet":
        from services.geneval import mmdet_backend

        return mmdet_backend.build_backend(args)
    from services.geneval.shapes_detector import ShapesDetector

    return ShapesDetector()


def build_scorer(args: argparse.Namespace) -> GenEvalScorer:
    """GenEvalScorer over the chosen backend with the flags' scoring settings."""
    scoring = ScoringConfig(threshold=args.threshold, counting_threshold=args.counting_threshold,
                            max_objects=args.max_objects, nms_threshold=args.nms_threshold,
                            position_threshold=args.position_threshold)
    return GenEvalScorer(build_backend(args), GenEvalScorerConfig(reward=args.reward, scoring=scoring))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_service(build_scorer, argv, name="geneval", add_arguments=add_arguments_for(_detector_choice(argv)),
                       description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
