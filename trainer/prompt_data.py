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
"""
from __future__ import annotations

import json
from dataclasses import dataclass
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


class PromptSchedule:
    """Which prompts each epoch (and each rank) trains on; state = groups consumed so far."""

    def __init__(self, records: list[PromptRecord], seed: int, groups_per_epoch: int):
        if groups_per_epoch < 1:
            raise ValueError("groups_per_epoch must be >= 1")
        self.records = records
        self.seed = seed
        self.groups_per_epoch = groups_per_epoch
        self.groups_consumed = 0  # groups drawn before the current epoch (the resumable position)
        self._pass_cache: dict[int, list[int]] = {}

    def _permutation(self, pass_index: int) -> list[int]:
        if pass_index not in self._pass_cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            self._pass_cache = {pass_index: torch.randperm(len(self.records), generator=generator).tolist()}
        return self._pass_cache[pass_index]

    def group_record(self, group_number: int) -> PromptRecord:
        """The prompt of the run's group number `group_number` (0-based, over the whole run)."""
        pass_index, position = divmod(group_number, len(self.records))
        return self.records[self._permutation(pass_index)[position]]

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
                "groups_per_epoch": self.groups_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_prompts"] != len(self.records) or state["seed"] != self.seed:
            raise ValueError(f"checkpoint was written for {state['num_prompts']} prompts with seed {state['seed']}; "
                             f"this run has {len(self.records)} prompts with seed {self.seed}")
        self.groups_consumed = int(state["groups_consumed"])
