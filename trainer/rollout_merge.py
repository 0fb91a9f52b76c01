"""Concatenating rollouts sampled in several calls into the one rollout that `prepare_training` sees.

The loop samples each prompt group (or chunk of groups) with its own generator seeded by the group's number in the
run, so the rollout noise of a group does not depend on how groups are laid out over ranks or calls (the DDP
equivalence test relies on it) and each chunk's images can be scored while the next chunk samples. The algorithm
then needs one rollout per rank; this module joins them.

An algorithm may provide `concat_rollouts(rollouts) -> Rollout` itself (preferred: it knows its own fields);
otherwise a joiner registered here by algorithm type is used. `supports_concat(algo)` says whether either exists;
when neither does, the loop samples all of a rank's groups in one call.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable

import torch

from trainer.algorithms.base import Algorithm, RewardQuery, Rollout
from trainer.models.base import Conditioning


def concat_queries(queries: list[RewardQuery]) -> RewardQuery:
    """Row-wise concatenation; group ids are kept (they are global keys such as prompt hashes)."""
    return RewardQuery(
        images=torch.cat([q.images for q in queries]),
        prompts=[p for q in queries for p in q.prompts],
        metadata=[m for q in queries for m in q.metadata],
        branch=[b for q in queries for b in q.branch],
        group=torch.cat([q.group for q in queries]))


def concat_conditionings(parts: list[Conditioning]) -> Conditioning:
    joined = {}
    for f in fields(Conditioning):
        values = [getattr(p, f.name) for p in parts]
        joined[f.name] = None if any(v is None for v in values) else torch.cat(values)
    return Conditioning(**joined)


def _concat_flow_grpo(rollouts: list[Any]) -> Any:
    """FlowGRPORollout: rows concatenated; prompt_index offset into the concatenated prompt conditioning."""
    offsets, total = [], 0
    for ro in rollouts:
        offsets.append(total)
        total += len(ro.prompt_cond)
    for ro in rollouts[1:]:
        if not torch.equal(ro.sigmas, rollouts[0].sigmas):
            raise ValueError("rollouts with different schedules cannot be concatenated")
    return replace(
        rollouts[0],
        query=concat_queries([ro.query for ro in rollouts]),
        latents=torch.cat([ro.latents for ro in rollouts]),
        log_probs=torch.cat([ro.log_probs for ro in rollouts]),
        prompt_index=torch.cat([ro.prompt_index + off for ro, off in zip(rollouts, offsets)]),
        group_keys=torch.cat([ro.group_keys for ro in rollouts]),
        prompt_cond=concat_conditionings([ro.prompt_cond for ro in rollouts]))


def _registered() -> dict[type, Callable[[list[Any]], Any]]:
    joiners: dict[type, Callable[[list[Any]], Any]] = {}
    try:
        from trainer.algorithms.flow_grpo import FlowGRPO
        joiners[FlowGRPO] = _concat_flow_grpo
    except ImportError:  # pragma: no cover - the algorithm module is optional here
        pass
    return joiners


def supports_concat(algo: Algorithm) -> bool:
    return hasattr(algo, "concat_rollouts") or type(algo) in _registered()


def concat_rollouts(algo: Algorithm, rollouts: list[Rollout]) -> Rollout:
    if len(rollouts) == 1:
        return rollouts[0]
    if hasattr(algo, "concat_rollouts"):
        return algo.concat_rollouts(rollouts)
    joiner = _registered().get(type(algo))
    if joiner is None:
        raise TypeError(f"no way to concatenate {type(rollouts[0]).__name__}; give the algorithm concat_rollouts()")
    return joiner(rollouts)
