"""The current set of rewards of a run, and its hot swap from the reward config file between steps.

`RewardSet.reload_if_changed()` is called by the training loop between steps. It looks at the file's mtime and
size first (cheap), and only when they moved reads the file and compares its SHA-256 with the content in use. A
valid new content replaces the set (adding, removing or re-weighting rewards, changing URLs or the mixing mode)
for the next step; the returned `ReloadResult` says in words what changed, for the log. A broken file (unreadable,
bad YAML, failed validation) keeps the previous set and the result carries the error; the same broken content is
reported once, not every step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainer.rewards.config_file import LoadedRewardConfig, RewardConfigError, load_reward_config
from trainer.rewards.mixer import RewardMixer
from trainer.rewards.spec import MixingMode, RetryPolicy, RewardSetConfig, RewardSpec, specs_from_flags


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: `changed` (the set was replaced), a readable `description`, or an `error`."""

    changed: bool  # True when the next step uses a different reward set
    description: str  # human-readable summary for the log ("" when nothing happened)
    error: str | None = None  # why the file was rejected (the previous set stays in use)

    def __bool__(self) -> bool:
        return self.changed


def describe_changes(old: RewardSetConfig, new: RewardSetConfig) -> str:
    """One line per difference between two reward sets, e.g. "reward 'a': weight 1.0 -> 0.5"."""
    lines = []
    before = {r.name: r for r in old.rewards}
    after = {r.name: r for r in new.rewards}
    for name, spec in after.items():
        if name not in before:
            lines.append(f"added reward {name!r} (weight {spec.weight}, {', '.join(spec.urls)})")
            continue
        prev = before[name]
        if prev.weight != spec.weight:
            lines.append(f"reward {name!r}: weight {prev.weight} -> {spec.weight}")
        if prev.urls != spec.urls:
            lines.append(f"reward {name!r}: urls {', '.join(prev.urls)} -> {', '.join(spec.urls)}")
        other = {f for f in RewardSpec.model_fields if f not in ("weight", "urls", "api_key")
                 and getattr(prev, f) != getattr(spec, f)}
        if prev.api_key != spec.api_key:
            other.add("api_key")
        if other:
            lines.append(f"reward {name!r}: changed {', '.join(sorted(other))}")
    lines += [f"removed reward {name!r}" for name in before if name not in after]
    if old.mixing != new.mixing:
        lines.append(f"mixing {old.mixing.value} -> {new.mixing.value}")
    if old.normalize_eps != new.normalize_eps:
        lines.append(f"normalize_eps {old.normalize_eps} -> {new.normalize_eps}")
    if old.retry != new.retry:
        lines.append("retry policy changed")
    return "; ".join(lines)


class RewardSet:
    """The rewards, mixing mode and retry policy in use; optionally backed by a watched config file."""

    def __init__(self, config: RewardSetConfig, path: str | Path | None = None) -> None:
        self.config = config  # what the next submitted query is scored and mixed with
        self.path = Path(path) if path is not None else None  # the watched reward config file, if any
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file when last looked at
        self._sha256: str | None = None  # hash of the content in use (or last rejected), to skip rereads

    @classmethod
    def from_file(cls, path: str | Path) -> "RewardSet":
        """Load the set from a YAML/JSON reward config file (raises RewardConfigError if it is broken)."""
        loaded = load_reward_config(path)
        reward_set = cls(loaded.config, path)
        reward_set._remember(loaded)
        return reward_set

    @classmethod
    def from_flags(cls, reward_flags: list[str], mixing: MixingMode | str = MixingMode.SUM_THEN_NORMALIZE,
                   retry: RetryPolicy | None = None) -> "RewardSet":
        """Build the set from `--reward-url` / `--reward` flag values (no hot swap: there is no file)."""
        return cls(RewardSetConfig(rewards=specs_from_flags(reward_flags), mixing=MixingMode(mixing),
                                   retry=retry or RetryPolicy()))

    def mixer(self) -> RewardMixer:
        """A mixer with the current weights and mode."""
        return RewardMixer.from_config(self.config)

    def reload_if_changed(self) -> ReloadResult:
        """Re-read the config file if it changed since the last look; see the module docstring."""
        if self.path is None:
            return ReloadResult(False, "")
        try:
            stat = os.stat(self.path)
        except OSError as err:
            return self._reject((-1, -1), f"{self.path}: cannot read reward config: {err}")
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return ReloadResult(False, "")
        try:
            loaded = load_reward_config(self.path)
        except RewardConfigError as err:
            return self._reject(stamp, str(err))
        if loaded.sha256 == self._sha256:
            self._stamp = stamp
            return ReloadResult(False, "")
        description = describe_changes(self.config, loaded.config)
        self.config = loaded.config
        self._remember(loaded)
        if not description:
            return ReloadResult(False, f"{self.path}: rewritten with no effective change")
        return ReloadResult(True, f"{self.path}: {description}")

    def _remember(self, loaded: LoadedRewardConfig) -> None:
        self._sha256 = loaded.sha256
        self._stamp = (loaded.mtime_ns, loaded.size)

    def _reject(self, stamp: tuple[int, int], error: str) -> ReloadResult:
        if stamp == self._stamp:  # this broken state was already reported
            return ReloadResult(False, "")
        self._stamp = stamp
        return ReloadResult(False, f"kept the previous reward set: {error}", error=error)
