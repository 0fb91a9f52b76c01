"""GenEval-style prompts and metadata for the shapes world, and scenes rendered to satisfy them.

Prompts and metadata follow GenEval's generator (djghosh13/geneval, prompts/create_prompts.py) exactly, with its
COCO classes and ten colours replaced by this world's three shapes and four colours:

| tag           | prompt                                   | include (exclude)                                              |
|---------------|------------------------------------------|----------------------------------------------------------------|
| single_object | a photo of a {A}                         | [{A, count 1}]                                                 |
| two_object    | a photo of a {A} and a {B}               | [{A, 1}, {B, 1}], A != B                                       |
| counting      | a photo of {two,three,four} {A}s         | [{A, n}]  (exclude [{A, n + 1}])                               |
| colors        | a photo of a {c} {A}                     | [{A, 1, color c}]                                              |
| position      | a photo of a {A} {rel} a {B}             | [{B, 1}, {A, 1, position [rel, 0]}], A != B                    |
| color_attr    | a photo of a {c} {A} and a {d} {B}       | [{A, 1, color c}, {B, 1, color d}], A != B, c != d             |

Only counting carries "exclude" (as in GenEval). The world is small enough to enumerate every prompt (126); the
shipped prompt files split them per tag into train and held-out (disjoint, seeded).

`scene_for` renders a scene that SATISFIES a metadata entry under GenEval's rules (exact counts, colours; for
position, the relation computed by GenEval's `relative_position` with its 0.1 margin is exactly the asked one), which
is what the base model is pretrained on.

Run `python -m trainer.shapes_world.prompts` to (re)write prompts/train.jsonl and prompts/heldout.jsonl.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from services.geneval.scoring import relative_position  # GenEval's rule, with its 0.1 margin
from trainer.shapes_world.render import CLASSES, COLORS, Placement, RenderConfig, Scene, ShapeSpec, render_scene

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}  # GenEval counts 2..4
POSITIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
PROMPTS_DIR = Path(__file__).parent / "prompts"
TRAIN_FILE = PROMPTS_DIR / "train.jsonl"
HELDOUT_FILE = PROMPTS_DIR / "heldout.jsonl"

Metadata = dict[str, Any]


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def single_object(a: str) -> Metadata:
    return {"tag": "single_object", "include": [{"class": a, "count": 1}], "prompt": f"a photo of {with_article(a)}"}


def two_object(a: str, b: str) -> Metadata:
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def counting(a: str, n: int) -> Metadata:
    return {"tag": "counting", "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {plural(a)}"}


def colors(a: str, c: str) -> Metadata:
    return {"tag": "colors", "include": [{"class": a, "count": 1, "color": c}],
            "prompt": f"a photo of {with_article(c)} {a}"}


def position(a: str, rel: str, b: str) -> Metadata:
    return {"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"}


def color_attr(a: str, c: str, b: str, d: str) -> Metadata:
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": c}, {"class": b, "count": 1, "color": d}],
            "prompt": f"a photo of {with_article(c)} {a} and {with_article(d)} {b}"}


def all_metadata() -> list[Metadata]:
    """Every GenEval-style prompt of the world, grouped by tag in TAGS order (deterministic)."""
    pairs = [(a, b) for a in CLASSES for b in CLASSES if a != b]
    cols = tuple(COLORS)
    out = [single_object(a) for a in CLASSES]
    out += [two_object(a, b) for a, b in pairs]
    out += [counting(a, n) for a in CLASSES for n in NUMBERS]
    out += [colors(a, c) for a in CLASSES for c in cols]
    out += [position(a, rel, b) for a, b in pairs for rel in POSITIONS]
    out += [color_attr(a, c, b, d) for a, b in pairs for c in cols for d in cols if c != d]
    return out


def by_tag(entries: Iterable[Metadata]) -> dict[str, list[Metadata]]:
    groups: dict[str, list[Metadata]] = {tag: [] for tag in TAGS}
    for entry in entries:
        groups[entry["tag"]].append(entry)
    return groups


def split(seed: int = 0, heldout_fraction: float = 1 / 3) -> tuple[list[Metadata], list[Metadata]]:
    """Disjoint (train, held-out) prompt lists: per tag, a seeded random `heldout_fraction` (at least one) is held
    out."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for tag, entries in by_tag(all_metadata()).items():
        order = rng.permutation(len(entries))
        k = max(1, round(heldout_fraction * len(entries)))
        held = set(order[:k].tolist())
        heldout += [e for i, e in enumerate(entries) if i in held]
        train += [e for i, e in enumerate(entries) if i not in held]
    return train, heldout


def write_jsonl(entries: Iterable[Metadata], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")


def read_jsonl(path: str | Path) -> list[Metadata]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def specs_for(metadata: Metadata, rng: np.random.Generator) -> list[ShapeSpec]:
    """The shapes a scene satisfying `metadata` holds: exactly `count` of each include clause, its colour if given,
    else a random one."""
    cols = tuple(COLORS)
    specs = []
    for clause in metadata["include"]:
        for _ in range(int(clause["count"])):
            specs.append(ShapeSpec(clause["class"], clause.get("color") or cols[int(rng.integers(len(cols)))]))
    return specs


def scene_for(metadata: Metadata, rng: np.random.Generator, config: RenderConfig = RenderConfig()) -> Scene:
    """Render a scene that satisfies `metadata` under GenEval's rules (for position: exactly the asked relation)."""
    specs = specs_for(metadata, rng)
    accept = None
    clauses = metadata["include"]
    if any("position" in c for c in clauses):
        # objects are laid out clause by clause (all counts are 1 for position prompts): object i <-> clause i
        def accept(layout: list[Placement]) -> bool:
            for i, clause in enumerate(clauses):
                if "position" in clause:
                    rel, target = clause["position"]
                    if relative_position(layout[i].box, layout[int(target)].box) != {rel}:
                        return False
            return True
    return render_scene(specs, rng, config, accept)


@dataclass(frozen=True)
class TagMix:
    """Sampling weights of the tags in pretraining (normalised; favours easy single-object and colour prompts)."""

    single_object: float = 0.25  # weight of "a photo of a {A}"
    two_object: float = 0.15  # weight of "a photo of a {A} and a {B}"
    counting: float = 0.10  # weight of "a photo of {n} {A}s"
    colors: float = 0.25  # weight of "a photo of a {c} {A}"
    position: float = 0.10  # weight of "a photo of a {A} {rel} a {B}"
    color_attr: float = 0.15  # weight of "a photo of a {c} {A} and a {d} {B}"

    def probabilities(self) -> np.ndarray:
        w = np.array([getattr(self, tag) for tag in TAGS], dtype=np.float64)
        return w / w.sum()


class PromptSampler:
    """Draws metadata entries: a tag by `TagMix`, then a prompt of that tag uniformly from `entries`."""

    def __init__(self, entries: list[Metadata], mix: TagMix = TagMix()) -> None:
        self.groups = {tag: group for tag, group in by_tag(entries).items() if group}
        p = np.array([mix.probabilities()[TAGS.index(tag)] for tag in self.groups])
        self.tags = list(self.groups)
        self.p = p / p.sum()

    def sample(self, rng: np.random.Generator) -> Metadata:
        tag = self.tags[int(rng.choice(len(self.tags), p=self.p))]
        group = self.groups[tag]
        return group[int(rng.integers(len(group)))]


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the shapes world's train/held-out GenEval prompt files.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-tag held-out draw")
    parser.add_argument("--heldout-fraction", type=float, default=1 / 3, help="fraction of each tag held out")
    parser.add_argument("--out-dir", type=Path, default=PROMPTS_DIR, help="where train.jsonl/heldout.jsonl go")
    args = parser.parse_args()
    train, heldout = split(args.seed, args.heldout_fraction)
    write_jsonl(train, args.out_dir / "train.jsonl")
    write_jsonl(heldout, args.out_dir / "heldout.jsonl")
    counts = {tag: (len(by_tag(train)[tag]), len(by_tag(heldout)[tag])) for tag in TAGS}
    print(f"train {len(train)}, held-out {len(heldout)}; per tag (train, held-out): {counts}")


if __name__ == "__main__":
    main()
