"""Reward curves of training runs: read them from a run's metrics.jsonl and plot one or several as a PNG.

A point is one epoch of the loop (trainer.loop): the optimizer steps done, the model evaluations spent so far
(sampling + training + reference NFE, from the algorithm's cumulative `cost`) and a reward: the mean mixed reward of
that epoch's rollout images (noisy: each epoch draws other prompts), or of the held-out evaluation that followed
it. Plotting uses matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.algorithms.base import Cost


@dataclass(frozen=True)
class CurvePoint:
    """One epoch of a run."""

    step: int  # optimizer steps done at the end of the epoch
    nfe: int  # model evaluations spent so far (sampling + training + reference), count
    reward: float  # mean mixed reward of the epoch's rollout images


def read_reward_curve(metrics_path: str | Path, kind: str = "epoch") -> list[CurvePoint]:
    """One point per epoch of a metrics.jsonl, in order (a resumed run's repeated epochs keep the last record).

    kind "epoch": the mean mixed reward of each epoch's rollout images; kind "eval": the held-out evaluation after
    an epoch (deterministic sampler, fixed prompts and noise: comparable across epochs), at that epoch's step/NFE.
    """
    epochs: dict[int, tuple[int, int, float]] = {}  # epoch -> (step, nfe, rollout reward)
    evals: dict[int, float] = {}  # epoch -> held-out reward
    for line in Path(metrics_path).read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "epoch":
            nfe = Cost(**(record.get("cost") or {})).model_nfe()
            epochs[int(record["epoch"])] = (int(record["step"]), nfe, float(record["reward/global_mixed_mean"]))
        elif record.get("kind") == "eval":
            evals[int(record["epoch"])] = float(record["reward_mixed_mean"])
    if kind == "epoch":
        return [CurvePoint(*epochs[e]) for e in sorted(epochs)]
    if kind == "eval":
        return [CurvePoint(epochs[e][0], epochs[e][1], evals[e]) for e in sorted(evals) if e in epochs]
    raise ValueError(f"kind must be 'epoch' or 'eval', got {kind!r}")


def plot_reward_curves(curves: dict[str, list[list[CurvePoint]]], path: str | Path, *, x: str = "step",
                       title: str = "", ylabel: str = "mean reward of rollouts") -> Path:
    """One line per label (the mean over its runs, on the first run's x values, with a min-max band when there are
    several runs); `x` is "step" (optimizer steps) or "nfe" (model evaluations). Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, runs in curves.items():
        runs = [run for run in runs if run]
        if not runs:
            continue
        length = min(len(run) for run in runs)
        xs = np.array([getattr(p, x) for p in runs[0][:length]], dtype=float)
        ys = np.array([[p.reward for p in run[:length]] for run in runs])
        ax.plot(xs, ys.mean(axis=0), label=f"{label} (n={len(runs)})" if len(runs) > 1 else label)
        if len(runs) > 1:
            ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), alpha=0.2)
    ax.set_xlabel({"step": "optimizer steps", "nfe": "model evaluations (NFE)"}[x])
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
