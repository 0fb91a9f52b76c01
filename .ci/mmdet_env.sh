#!/usr/bin/env bash
# Builds the second CI environment .venv-mmdet (CPU torch + mmcv 2.1.0 compiled with its ops + mmdet 3.3.0)
# and runs the tests marked `mmdet` with that venv's python. Called by .ci/run after the main tests.
#
# Why a second venv: mmdet 3.3.0 needs mmcv >= 2.0, < 2.2 WITH its compiled ops (mmcv-lite fails in init_detector),
# and PyPI has no mmcv wheel for torch 2.13; the sdist builds on the CPU in about 10 minutes (environment.md).
# pip caches the built wheel (~/.cache/pip), so a CI runner that keeps that directory rebuilds in seconds.
#
# Usage: .ci/mmdet_env.sh            build (or reuse) .venv-mmdet, then run `pytest -m mmdet`
#        .ci/mmdet_env.sh --build    build only
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-mmdet
PIP="$VENV/bin/pip"
CONSTRAINTS=.ci/constraints.txt   # pins torch==2.13.0 (CPU wheel)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$PIP" install -q -U pip
# Build tools first: mmcv 2.1.0's setup.py uses pkg_resources (removed in setuptools 81) and is built without
# isolation so that it compiles against the pinned torch already in the venv.
"$PIP" install -q -c "$CONSTRAINTS" "setuptools<81" wheel ninja torch
if ! "$VENV/bin/python" -c "import mmcv._ext" 2>/dev/null; then
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
    "$PIP" install -c "$CONSTRAINTS" --no-build-isolation "mmcv==2.1.0"
fi
"$PIP" install -q -c "$CONSTRAINTS" "mmengine>=0.10,<1" "mmdet==3.3.0"
# The project itself (server core, transformers for the colour classifier's CLIP, pytest).
"$PIP" install -q -c "$CONSTRAINTS" -e ".[dev]"

"$VENV/bin/python" -c "import mmcv, mmdet, mmcv._ext; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"

if [ "${1:-}" = "--build" ]; then
  exit 0
fi
"$VENV/bin/python" -m pytest -m mmdet tests
