"""GenEval's rules over detections: strict correctness (the benchmark) and partial credit (the training reward).

The logic takes detections (services.geneval.detections.Detection) and colour names and knows nothing of how they
were made; the shapes and mmdet backends feed it the same way.

Strict correctness follows GenEval's evaluation (djghosh13/geneval, evaluation/evaluate_images.py):
- selection: per class, keep detections with confidence > 0.3 (> 0.9 when the tag is `counting`), most confident
  first, at most 16 per class, then greedy suppression of boxes overlapping a kept one by IoU >= the NMS threshold
  (GenEval's default threshold 1.0 turns suppression off; its IoU counts pixels inclusively, +1);
- include clauses combine with AND: the class must have at least `count` selected detections; the colour and the
  position are checked on the `count` most confident ones only; all of them must have the clause's colour; each of
  them must stand in the relation to every object of the target clause, which must itself have matched;
- position: A is `left of` B when, after shrinking the centre offset by 0.1 x (size of A + size of B) per axis, the
  remaining offset points more than half-way left (dx / |offset| < -0.5); likewise right of, above, below
  (image y points down). An offset inside the margin on both axes is no relation at all;
- exclude clauses combine with OR: `count` or more selected detections of the class make the image wrong.
- `summarize`: per-tag accuracy and the overall score as the mean over tags (GenEval's summary_scores.py).

Partial credit follows the training reward of Flow-GRPO's GenEval reward server (yifan123/reward-server,
reward_server/gen_eval.py, `evaluate_reward`): the mean of one term per check, where an include clause gives
- a count term 1 - |count - found| / count over ALL selected detections of its class (the image should hold exactly
  `count`); when found != count, its colour and position checks are not run;
- a colour term 1 - |count - n_with_colour| / count, when the count matched;
- a position term 1 (every pair in the relation) or 0.
Deviations from that server, each deliberate:
1. exclude clauses count (the server ignored them): each adds a term, 1 when fewer than `count` of its class were
   selected, else 0;
2. a failed position check adds one 0 term (the server added 0 and then also 1, so a failed position check both
   diluted the mean and paid for itself);
3. every check of a clause adds exactly one term, 0 when it was not reached (the server added one 0 for a clause
   with colour and position whose count failed, and no position term when the colour failed). GenEval's own
   tags never put colour and position in one clause, so this changes nothing on its prompts;
4. the count and colour terms are clipped at 0 (the server's went negative when more than 2 x count objects were
   found, e.g. -2 for 12 found of 4), so partial credit stays in [0, 1].
The server's own `strict_correct` (exact count, no exclude clauses) is not reproduced: strict here is GenEval's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from services.geneval.detections import Detection

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")  # GenEval's six tags
RELATIONS = ("left of", "right of", "above", "below")  # GenEval's position relations


class InvalidMetadataError(ValueError):
    """The item's metadata does not follow GenEval's format; the message names the offending field."""


@dataclass(frozen=True)
class ScoringConfig:
    """GenEval's thresholds (the official defaults)."""

    threshold: float = 0.3  # keep detections with confidence strictly above this (all tags but counting)
    counting_threshold: float = 0.9  # the same for the `counting` tag
    max_objects: int = 16  # most detections kept per class, most confident first
    nms_threshold: float = 1.0  # drop a detection whose IoU with a kept one of its class is >= this; 1.0 = never
    position_threshold: float = 0.1  # margin, as a fraction of the summed object sizes per axis, for relations


@dataclass(frozen=True)
class IncludeClause:
    """`count` objects of `class_name` wanted, optionally all of `color` and all in `position` to a target."""

    class_name: str  # object class
    count: int  # how many are wanted (>= 1)
    color: str | None = None  # colour every counted object must have
    position: tuple[str, int] | None = None  # (relation, index of the target include clause, earlier than this)


@dataclass(frozen=True)
class ExcludeClause:
    """The image is wrong when it holds `count` or more objects of `class_name`."""

    class_name: str  # object class
    count: int  # smallest number of objects that makes the image wrong (>= 1)


@dataclass(frozen=True)
class GenEvalMetadata:
    """One prompt's GenEval metadata, parsed and validated."""

    tag: str  # one of TAGS (only `counting` changes the scoring: its confidence threshold)
    include: tuple[IncludeClause, ...]  # combined with AND
    exclude: tuple[ExcludeClause, ...] = ()  # combined with OR
    prompt: str = ""  # the prompt, informative


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value) or value < 1:
        raise InvalidMetadataError(f"{where} must be a positive integer, got {value!r}")
    return int(value)


def _name(value: Any, where: str, allowed: Iterable[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMetadataError(f"{where} must be a non-empty string, got {value!r}")
    if allowed is not None:
        allowed = tuple(allowed)
        if value not in allowed:
            raise InvalidMetadataError(f"{where} is {value!r}, not one of {', '.join(allowed)}")
    return value


def parse_metadata(
    raw: Mapping[str, Any] | None,
    classes: Iterable[str] | None = None,
    colors: Iterable[str] | None = None,
) -> GenEvalMetadata:
    """Validate GenEval metadata (numbers may arrive as floats, as protobuf Structs send them).

    `classes` / `colors`, when given, are the names the detector backend knows; others are rejected.
    """
    if not isinstance(raw, Mapping):
        raise InvalidMetadataError("metadata is required: {'tag', 'include': [...], 'exclude': [...]}")
    classes = tuple(classes) if classes is not None else None
    colors = tuple(colors) if colors is not None else None
    tag = _name(raw.get("tag"), "metadata.tag", TAGS)
    include_raw = raw.get("include")
    if not isinstance(include_raw, (list, tuple)) or not include_raw:
        raise InvalidMetadataError("metadata.include must be a non-empty list of clauses")
    include: list[IncludeClause] = []
    for index, clause in enumerate(include_raw):
        where = f"metadata.include[{index}]"
        if not isinstance(clause, Mapping):
            raise InvalidMetadataError(f"{where} must be an object")
        class_name = _name(clause.get("class"), f"{where}.class", classes)
        count = _positive_int(clause.get("count"), f"{where}.count")
        color = None
        if clause.get("color") is not None:
            color = _name(clause["color"], f"{where}.color", colors)
        position = None
        if clause.get("position") is not None:
            pos = clause["position"]
            if not isinstance(pos, (list, tuple)) or len(pos) != 2:
                raise InvalidMetadataError(f"{where}.position must be [relation, target clause index]")
            relation = _name(pos[0], f"{where}.position[0]", RELATIONS)
            if isinstance(pos[1], str) and pos[1].isdigit():  # some GenEval exports write the index as a string
                target = int(pos[1])
            elif isinstance(pos[1], (int, float)) and not isinstance(pos[1], bool) and float(pos[1]) == int(pos[1]):
                target = int(pos[1])
            else:
                raise InvalidMetadataError(f"{where}.position[1] must be an integer, got {pos[1]!r}")
            if not 0 <= target < index:
                raise InvalidMetadataError(f"{where}.position[1] must name an earlier include clause, got {target}")
            position = (relation, target)
        include.append(IncludeClause(class_name, count, color, position))
    exclude_raw = raw.get("exclude") or []
    if not isinstance(exclude_raw, (list, tuple)):
        raise InvalidMetadataError("metadata.exclude must be a list of clauses")
    exclude = []
    for index, clause in enumerate(exclude_raw):
        where = f"metadata.exclude[{index}]"
        if not isinstance(clause, Mapping):
            raise InvalidMetadataError(f"{where} must be an object")
        exclude.append(
            ExcludeClause(_name(clause.get("class"), f"{where}.class", classes),
                          _positive_int(clause.get("count"), f"{where}.count"))
        )
    prompt = raw.get("prompt", "")
    return GenEvalMetadata(tag, tuple(include), tuple(exclude), prompt if isinstance(prompt, str) else "")


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two xyxy boxes counting pixels inclusively (+1), as GenEval's compute_iou."""

    def area(box: Sequence[float]) -> float:
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def select_detections(
    detections: Iterable[Detection], tag: str, config: ScoringConfig = ScoringConfig()
) -> dict[str, list[Detection]]:
    """GenEval's per-class selection: threshold by tag, most confident first, at most max_objects, then NMS."""
    threshold = config.counting_threshold if tag == "counting" else config.threshold
    by_class: dict[str, list[Detection]] = {}
    for detection in detections:
        if detection.confidence > threshold:
            by_class.setdefault(detection.class_name, []).append(detection)
    selected: dict[str, list[Detection]] = {}
    for class_name, found in by_class.items():
        # stable sort, most confident first (ties keep the backend's order)
        ordering = sorted(found, key=lambda d: -d.confidence)[: config.max_objects]
        kept: list[Detection] = []
        while ordering:
            best = ordering.pop(0)
            kept.append(best)
            if config.nms_threshold < 1:
                ordering = [d for d in ordering if box_iou(best.box, d.box) < config.nms_threshold]
        selected[class_name] = kept
    return selected


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1
) -> set[str]:
    """Relations of box A to box B (GenEval's relative_position): a subset of RELATIONS, possibly empty."""
    boxes = np.array([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def colour_targets(selected: Mapping[str, list[Detection]], metadata: GenEvalMetadata) -> dict[int, list[Detection]]:
    """Detections whose colour each colour clause needs: include index -> its `count` most confident detections.

    Only clauses with enough detections of their class appear (strict and partial credit check colour only then).
    """
    targets = {}
    for index, clause in enumerate(metadata.include):
        found = selected.get(clause.class_name, [])
        if clause.color is not None and len(found) >= clause.count:
            targets[index] = found[: clause.count]
    return targets


@dataclass
class ClauseResult:
    """How one clause fared, under both rules (JSON-able through `as_dict`)."""

    kind: str  # "include" or "exclude"
    index: int  # position of the clause in its list
    class_name: str  # the clause's class
    count: int  # the clause's count
    found: int  # selected detections of the class
    strict: bool  # the clause holds under GenEval's rules
    partial: list[float] = field(default_factory=list)  # this clause's partial-credit terms
    color: str | None = None  # wanted colour
    found_colors: list[str] | None = None  # colours of the counted detections (when classified)
    relation: str | None = None  # wanted relation to the target clause
    target: int | None = None  # target include clause index
    found_relations: list[list[str]] | None = None  # relations of each counted object to each target object
    reason: str = ""  # why the clause failed under GenEval's rules ("" when it holds)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "index": self.index, "class": self.class_name, "count": self.count,
            "found": self.found, "strict": self.strict, "partial": [float(t) for t in self.partial],
        }
        if self.color is not None:
            out["color"] = self.color
        if self.found_colors is not None:
            out["found_colors"] = list(self.found_colors)
        if self.relation is not None:
            out["position"] = [self.relation, self.target]
        if self.found_relations is not None:
            out["found_relations"] = [sorted(r) for r in self.found_relations]
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Evaluation:
    """One image judged against its metadata."""

    tag: str  # the metadata's tag
    strict: bool  # GenEval correctness
    partial: float  # partial credit in [0, 1]
    clauses: list[ClauseResult]  # include clauses first, then exclude clauses

    def detail(self) -> dict[str, Any]:
        """JSON-able per-clause detail (for ScorerOutput.detail)."""
        return {
            "tag": self.tag, "strict": self.strict, "partial": self.partial,
            "clauses": [c.as_dict() for c in self.clauses],
            "reasons": [c.reason for c in self.clauses if c.reason],
        }


def _count_term(count: int, found: int) -> float:
    return max(0.0, 1.0 - abs(count - found) / count)


def _position_pairs(
    counted: list[Detection], targets: list[Detection], relation: str, config: ScoringConfig
) -> tuple[bool, list[list[str]]]:
    """Whether every counted object stands in `relation` to every target; relations seen, in GenEval's order."""
    seen: list[list[str]] = []
    for obj in counted:
        for target in targets:
            relations = relative_position(obj.box, target.box, config.position_threshold)
            seen.append(sorted(relations))
            if relation not in relations:
                return False, seen
    return True, seen


def evaluate(
    selected: Mapping[str, list[Detection]],
    metadata: GenEvalMetadata,
    colours: Mapping[int, list[str]],
    config: ScoringConfig = ScoringConfig(),
) -> Evaluation:
    """Judge one image: `selected` from select_detections, `colours` for each index of colour_targets."""
    results: list[ClauseResult] = []
    strict_groups: list[list[Detection] | None] = []  # GenEval's matched_groups (at least `count`)
    exact_groups: list[list[Detection] | None] = []  # the reward server's matched groups (exactly `count`)
    for index, clause in enumerate(metadata.include):
        found = list(selected.get(clause.class_name, []))
        counted = found[: clause.count]
        result = ClauseResult("include", index, clause.class_name, clause.count, len(found), strict=True,
                              color=clause.color)
        reasons = []
        # --- GenEval strict rules
        found_colours = list(colours[index]) if clause.color is not None and index in colours else None
        result.found_colors = found_colours
        if len(found) < clause.count:
            result.strict = False
            reasons.append(f"expected {clause.class_name}>={clause.count}, found {len(found)}")
        else:
            if clause.color is not None:
                if found_colours is None:
                    raise KeyError(f"no colours given for include clause {index}")
                n_colour = found_colours.count(clause.color)
                if n_colour < clause.count:
                    result.strict = False
                    reasons.append(f"expected {clause.color} {clause.class_name}>={clause.count}, found "
                                   f"{n_colour} {clause.color} (colours: {', '.join(found_colours)})")
            if clause.position is not None and result.strict:
                relation, target = clause.position
                result.relation, result.target = relation, target
                if strict_groups[target] is None:
                    result.strict = False
                    reasons.append(f"no target for {clause.class_name} to be {relation}")
                else:
                    ok, seen = _position_pairs(counted, strict_groups[target], relation, config)
                    result.found_relations = seen
                    if not ok:
                        result.strict = False
                        reasons.append(f"expected {clause.class_name} {relation} target, found "
                                       f"{' and '.join(seen[-1]) or 'no relation'}")
        if clause.position is not None:
            result.relation, result.target = clause.position
        strict_groups.append(counted if result.strict else None)
        result.reason = "; ".join(reasons)
        # --- partial credit (Flow-GRPO reward server, fixed: one term per check, 0 when not reached)
        terms = [_count_term(clause.count, len(found))]
        exact = len(found) == clause.count
        if clause.color is not None:
            if exact:
                n_colour = found_colours.count(clause.color)
                terms.append(_count_term(clause.count, n_colour))
                exact = n_colour == clause.count
            else:
                terms.append(0.0)
        if clause.position is not None:
            relation, target = clause.position
            if exact and exact_groups[target] is not None:
                ok, _ = _position_pairs(found, exact_groups[target], relation, config)
                terms.append(1.0 if ok else 0.0)
                exact = ok
            else:
                terms.append(0.0)
                exact = False
        exact_groups.append(found if exact else None)
        result.partial = terms
        results.append(result)
    for index, clause in enumerate(metadata.exclude):
        n = len(selected.get(clause.class_name, []))
        holds = n < clause.count
        results.append(ClauseResult(
            "exclude", index, clause.class_name, clause.count, n, strict=holds, partial=[1.0 if holds else 0.0],
            reason="" if holds else f"expected {clause.class_name}<{clause.count}, found {n}",
        ))
    terms = [t for r in results for t in r.partial]
    return Evaluation(
        tag=metadata.tag,
        strict=all(r.strict for r in results),
        partial=float(sum(terms) / len(terms)) if terms else 0.0,
        clauses=results,
    )


def scaled_thresholds(config: ScoringConfig, scale: float) -> ScoringConfig:
    """`config` with both confidence thresholds multiplied by `scale` (the rest unchanged)."""
    return replace(config, threshold=config.threshold * scale, counting_threshold=config.counting_threshold * scale)


def threshold_scale_intervals(detections: Iterable[Detection], tag: str,
                              config: ScoringConfig = ScoringConfig()) -> list[tuple[float, float]]:
    """The threshold scale u in [0, 1] cut where the selection changes: (u at the interval's middle, width) pairs.

    At scale u a detection is selected when its confidence exceeds u x the tag's threshold, so the selection is
    constant between the cuts u = confidence / threshold. The widths sum to 1."""
    theta = config.counting_threshold if tag == "counting" else config.threshold
    if theta <= 0:
        return [(1.0, 1.0)]
    cuts = sorted({0.0, 1.0} | {min(max(d.confidence / theta, 0.0), 1.0) for d in detections})
    return [((low + high) / 2, high - low) for low, high in zip(cuts, cuts[1:]) if high > low]


@dataclass(frozen=True)
class GradedLevel:
    """One interval of the threshold scale u: its width and what is selected over it."""

    width: float  # the interval's length on u in [0, 1]
    config: ScoringConfig  # thresholds scaled to the interval's middle
    selected: dict[str, list[Detection]]  # select_detections at those thresholds


def graded_levels(detections: Sequence[Detection], tag: str,
                  config: ScoringConfig = ScoringConfig()) -> list[GradedLevel]:
    """The selection over each interval of `threshold_scale_intervals` (what `graded_credit` integrates)."""
    levels = []
    for scale, width in threshold_scale_intervals(detections, tag, config):
        scaled = scaled_thresholds(config, scale)
        levels.append(GradedLevel(width, scaled, select_detections(detections, tag, scaled)))
    return levels


def union_colour_targets(selections: Iterable[Mapping[str, list[Detection]]],
                         metadata: GenEvalMetadata) -> dict[int, list[Detection]]:
    """`colour_targets` of several selections merged: per colour clause (include index, ascending), every detection
    whose colour one of them needs, in order of first need, each once."""
    needed: dict[int, list[Detection]] = {}
    for selected in selections:
        for index, targets in colour_targets(selected, metadata).items():
            seen = needed.setdefault(index, [])
            seen.extend(d for d in targets if all(d is not other for other in seen))
    return dict(sorted(needed.items()))


def graded_credit(levels: Sequence[GradedLevel], metadata: GenEvalMetadata, colour_of: Mapping[int, str]) -> float:
    """Partial credit averaged over the confidence threshold scaled from 0 to GenEval's: the integral over u in
    [0, 1] of the partial credit with thresholds u x (0.3, 0.9 for counting), from `graded_levels`.

    Not in GenEval or Flow-GRPO (a shaped training reward, aligned with them): the integrand at u = 1 is the partial
    credit, and an image that is right with every object above its threshold scores 1 as it does; but an object
    below the threshold is counted over the part [0, confidence / threshold) of the scale, so the credit grows
    continuously with the detector's confidence instead of jumping at the threshold, and extra low-confidence
    objects cost credit over the same part. `colour_of` maps id(detection) to its colour name for every detection
    a colour clause needs at some level (`union_colour_targets` of the levels' selections)."""
    total = 0.0
    for level in levels:
        colours = {index: [colour_of[id(d)] for d in targets]
                   for index, targets in colour_targets(level.selected, metadata).items()}
        total += level.width * evaluate(level.selected, metadata, colours, level.config).partial
    return float(total)


def object_confidence(detections: Sequence[Detection], metadata: GenEvalMetadata) -> float:
    """How confidently the detector sees each object the prompt asks for: per include clause (class c, count n), the
    n most confident detections of class c, a missing one counting 0; the mean over all requested objects, in [0, 1].

    Not in GenEval or Flow-GRPO (a shaped training reward): it ignores colours, positions and exclude clauses, has
    no threshold, and so rises continuously as each requested object is drawn more cleanly (the shapes detector's
    confidence measures how cleanly a shape is drawn). Meant to be mixed with a compositional reward (partial
    credit), as an aesthetic reward is mixed with GenEval in the papers."""
    by_class: dict[str, list[float]] = {}
    for d in detections:
        by_class.setdefault(d.class_name, []).append(float(d.confidence))
    total, requested = 0.0, 0
    for clause in metadata.include:
        found = sorted(by_class.get(clause.class_name, []), reverse=True)[: clause.count]
        total += sum(min(max(c, 0.0), 1.0) for c in found)
        requested += clause.count
    return total / requested if requested else 0.0


def summarize(tags: Sequence[str], correct: Sequence[bool | float]) -> dict[str, float]:
    """GenEval's summary: accuracy per tag present, and `overall` = the mean of the per-tag accuracies."""
    if len(tags) != len(correct):
        raise ValueError(f"{len(tags)} tags but {len(correct)} results")
    per_tag: dict[str, list[float]] = {}
    for tag, ok in zip(tags, correct):
        per_tag.setdefault(tag, []).append(float(ok))
    summary = {tag: float(np.mean(values)) for tag, values in per_tag.items()}
    summary["overall"] = float(np.mean(list(summary.values()))) if summary else 0.0
    return summary
