"""Prompt files and the deterministic, resumable order in which prompt groups are drawn.

Formats:
- plain text: one prompt per line (blank lines and lines starting with '#' skipped), no metadata;
- JSONL: one object per line with a "prompt" (or "text") key; every other key is the prompt's metadata, passed
  unchanged to the reward services (e.g. GenEval's {"tag", "include", "exclude"}).

Order: the run draws prompt groups one after another from an endless sequence of passes over the prompts; pass p
is a permutation seeded by (seed, p). Group number k of the run is therefore a pure function of (seed, k), so the
whole data state is one integer (`groups_consumed`), identical on every rank, and a resumed or re-sharded run
draws exactly the same prompts. Each epoch's groups are split into contiguous blocks, one per data-parallel rank,
so concatenating the ranks' blocks in rank order gives the single-process order.

Balanced order (`balance_by="tag"`): the prompts are split into strata by that metadata key, and every block of T
consecutive groups (T = number of strata) holds one prompt of each stratum, in a permutation seeded by (seed, block);
within a stratum the prompts come in passes of their own permutations. Every stratum is then trained equally often,
whatever its share of the file (GenEval's overall score is the mean over tags, while its prompt lists are mostly
colour-attribution prompts). Still a pure function of (seed, k).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class PromptRecord:
    """One prompt and its metadata for the reward services."""

    prompt: str  # the text prompt
    metadata: dict[str, Any] | None  # per-prompt metadata (JSONL keys other than the prompt), None for .txt


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Prompts of a .txt or .jsonl file (format chosen by the extension; .json lines also accepted)."""
    path = Path(path)
    records: list[PromptRecord] = []
    jsonl = path.suffix in (".jsonl", ".json", ".ndjson")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or (not jsonl and line.startswith("#")):
            continue
        if not jsonl:
            records.append(PromptRecord(line, None))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object with a 'prompt' key")
        key = "prompt" if "prompt" in obj else "text" if "text" in obj else None
        if key is None or not isinstance(obj[key], str):
            raise ValueError(f"{path}:{number}: missing string key 'prompt'")
        text = obj.pop(key)
        records.append(PromptRecord(text, obj or None))
    if not records:
        raise ValueError(f"prompt file {path} holds no prompts")
    return records


@lru_cache(maxsize=16)  # the balanced order alternates between one permutation per stratum + the block's
def seeded_permutation(n: int, *seed_parts: int) -> tuple[int, ...]:
    """A permutation of range(n) that depends only on the seed parts."""
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % (2 ** 63 - 1)
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist())


def prompt_strata(records: list[PromptRecord], key: str) -> list[list[int]]:
    """Indices of the records grouped by metadata[key], strata in order of first appearance."""
    strata: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if not record.metadata or key not in record.metadata:
            raise ValueError(f"balance_by={key!r}: prompt {index} ({record.prompt!r}) has no metadata key {key!r}")
        strata.setdefault(str(record.metadata[key]), []).append(index)
    return list(strata.values())


class PromptSchedule:
    """Which prompts each epoch (and each rank) trains on; state = groups consumed so far."""

    def __init__(self, records: list[PromptRecord], seed: int, groups_per_epoch: int, balance_by: str | None = None):
        if groups_per_epoch < 1:
            raise ValueError("groups_per_epoch must be >= 1")
        self.records = records
        self.seed = seed
        self.groups_per_epoch = groups_per_epoch
        self.balance_by = balance_by or None
        self.strata = prompt_strata(records, self.balance_by) if self.balance_by else [list(range(len(records)))]
        self.groups_consumed = 0  # groups drawn before the current epoch (the resumable position)

    def group_record(self, group_number: int) -> PromptRecord:
        """The prompt of the run's group number `group_number` (0-based, over the whole run)."""
        if self.balance_by is None:
            pass_index, position = divmod(group_number, len(self.records))
            return self.records[seeded_permutation(len(self.records), self.seed, pass_index)[position]]
        block, slot = divmod(group_number, len(self.strata))
        stratum_index = seeded_permutation(len(self.strata), self.seed, -1, block)[slot]
        stratum = self.strata[stratum_index]
        pass_index, position = divmod(block, len(stratum))
        return self.records[stratum[seeded_permutation(len(stratum), self.seed, stratum_index, pass_index)[position]]]

    def epoch_groups(self, rank: int = 0, world_size: int = 1) -> list[tuple[int, PromptRecord]]:
        """This rank's (global group number, prompt) pairs of the current epoch (a contiguous block)."""
        if self.groups_per_epoch % world_size:
            raise ValueError(f"groups_per_epoch {self.groups_per_epoch} is not divisible by {world_size} ranks")
        per_rank = self.groups_per_epoch // world_size
        start = self.groups_consumed + rank * per_rank
        return [(n, self.group_record(n)) for n in range(start, start + per_rank)]

    def advance_epoch(self) -> None:
        self.groups_consumed += self.groups_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"groups_consumed": self.groups_consumed, "seed": self.seed, "num_prompts": len(self.records),
                "groups_per_epoch": self.groups_per_epoch, "balance_by": self.balance_by}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_prompts"] != len(self.records) or state["seed"] != self.seed:
            raise ValueError(f"checkpoint was written for {state['num_prompts']} prompts with seed {state['seed']}; "
                             f"this run has {len(self.records)} prompts with seed {self.seed}")
        if state.get("balance_by") != self.balance_by:
            raise ValueError(f"checkpoint was written with balance_by={state.get('balance_by')!r}; this run has "
                             f"balance_by={self.balance_by!r}")
        self.groups_consumed = int(state["groups_consumed"])
