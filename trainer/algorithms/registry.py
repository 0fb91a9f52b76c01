"""`--algo` names to algorithm plug-ins: build_algorithm(name, config) for flow_grpo | flow_grpo_fixed | tempflow |
pave. `config` is the algorithm's typed config dataclass, a dict of its fields (unknown keys are an error; for tempflow
and pave the trainer's generic `group_size` means `num_branches`), or None for the authors' defaults. `ALGORITHM_CONFIGS` maps each name to its config class so a CLI can list the fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from trainer.algorithms.base import Algorithm
from trainer.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from trainer.algorithms.pave import PaveConfig, PaveGRPO
from trainer.algorithms.tempflow import TempFlowConfig, TempFlowGRPO

ALGORITHM_CONFIGS: dict[str, type] = {
    "flow_grpo": FlowGRPOConfig,
    "flow_grpo_fixed": FlowGRPOConfig,
    "tempflow": TempFlowConfig,
    "pave": PaveConfig,
}
ALGORITHM_NAMES: tuple[str, ...] = tuple(ALGORITHM_CONFIGS)

# per-name defaults that differ from the config class's (Fixed = per-group std)
_NAME_DEFAULTS: dict[str, dict[str, Any]] = {"flow_grpo_fixed": {"global_std": False}}
# the trainer's generic knobs under an algorithm's own name: G of a branched algorithm is its branches per step
_ALIASES: dict[str, dict[str, str]] = {"tempflow": {"group_size": "num_branches"},
                                       "pave": {"group_size": "num_branches"}}


def default_config(name: str) -> Any:
    """The authors'-code defaults for `name`."""
    if name not in ALGORITHM_CONFIGS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHM_NAMES)}")
    return ALGORITHM_CONFIGS[name](**_NAME_DEFAULTS.get(name, {}))


def build_algorithm(name: str, config: Any = None) -> Algorithm:
    """The algorithm plug-in for `name`, configured by a config dataclass, a dict of overrides, or None."""
    if name not in ALGORITHM_CONFIGS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHM_NAMES)}")
    config_class = ALGORITHM_CONFIGS[name]
    if config is None:
        config = default_config(name)
    elif isinstance(config, dict):
        aliases = _ALIASES.get(name, {})
        config = {aliases.get(key, key): value for key, value in config.items()}
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {name} config fields {unknown}; known: {sorted(known)}")
        config = config_class(**{**_NAME_DEFAULTS.get(name, {}), **config})
    elif not isinstance(config, config_class):
        raise TypeError(f"{name} needs a {config_class.__name__}, got {type(config).__name__}")
    if name in ("flow_grpo", "flow_grpo_fixed"):
        return FlowGRPO(config, name=name)
    if name == "tempflow":
        return TempFlowGRPO(config)
    return PaveGRPO(config)
