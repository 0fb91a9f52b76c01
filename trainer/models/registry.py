"""Model adapters by name: `load_model(kind, path, config)` is how the trainer turns its config into a FlowModel.

To add an adapter, add one entry to MODEL_LOADERS: a name mapped to a function (path, config) -> FlowModel. Loaders
import their module lazily, so naming one adapter never imports another's dependencies.
"""
from __future__ import annotations

from typing import Any, Callable

from trainer.models.base import FlowModel


def _load_sd3(path: str | None, config: Any) -> FlowModel:
    from trainer.models.sd3 import SD3FlowModel

    return SD3FlowModel(path, config)


def _load_shapes(path: str | None, config: Any) -> FlowModel:
    from trainer.models.shapes import ShapesFlowModel

    return ShapesFlowModel(path, config)


# The registration point: kind -> loader(path, config); path None = the adapter's default weights.
# The shapes adapter registers "shapes" here.
MODEL_LOADERS: dict[str, Callable[[str | None, Any], FlowModel]] = {
    "sd3": _load_sd3,
    "shapes": _load_shapes,
}


def load_model(kind: str, path: str | None, config: Any) -> FlowModel:
    """The FlowModel of adapter `kind` loaded from `path` (local directory or hub id; None = the adapter's default)
    with its typed `config`."""
    if kind not in MODEL_LOADERS:
        raise ValueError(f"unknown model kind {kind!r}; registered: {', '.join(sorted(MODEL_LOADERS))}")
    return MODEL_LOADERS[kind](path, config)
