"""The trainer's side of the reward schema: a slice of a RewardQuery -> ScoreRequest bytes, ScoreResponse -> scores.

Images travel as raw uint8 HWC pixels (lossless, no codec; the service decodes them with services.common.codec),
metadata dicts as google.protobuf.Struct, branch ids as BranchIds, and each item's index in the query as its
item_id. A reply is checked item by item: an item that carries an error, or no value, or a non-finite value, is a
`RewardItemError` naming the reward, the query index and the service's message; it is never turned into a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from google.protobuf import json_format

from protos.reward.v1 import reward_pb2

PROTOBUF_MEDIA_TYPE = "application/x-protobuf"


class RewardItemError(RuntimeError):
    """A service answered, but could not score some items; the step must not train on them."""

    def __init__(self, reward: str, failures: list[tuple[int, str, str]]) -> None:
        self.reward = reward
        self.failures = failures  # (query index, error code, message)
        shown = "; ".join(f"item {i}: {code}: {msg}" for i, code, msg in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"reward {reward!r} failed to score {len(failures)} item(s): {shown}{more}")


@dataclass
class ChunkScores:
    """The scores of one chunk of a query, aligned with the chunk's items."""

    values: np.ndarray  # float64 [n]: each item's reward
    components: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64 [n]; NaN where absent
    model: reward_pb2.ModelInfo | None = None  # the service's model info from the reply
    queue_ms: float = 0.0  # longest queue wait of an item of this chunk, milliseconds (service-reported)
    compute_ms: float = 0.0  # forward time of the batches this chunk rode in, milliseconds (service-reported)


def build_score_request(images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None],
                        branch: Sequence[dict[str, int] | None], first_index: int, request_id: str = "",
                        deadline_ms: int = 0) -> reward_pb2.ScoreRequest:
    """A ScoreRequest for images [n, H, W, C] uint8 with their prompts/metadata/branch ids.

    `first_index` is the query index of images[0]; item ids are the query indices as decimal strings.
    """
    request = reward_pb2.ScoreRequest(request_id=request_id, deadline_ms=deadline_ms)
    for offset in range(len(images)):
        item = request.items.add()
        pixels = np.ascontiguousarray(images[offset], dtype=np.uint8)
        if pixels.ndim != 3:
            raise ValueError(f"image {first_index + offset} must be HxWxC uint8, got shape {pixels.shape}")
        raw = item.image.raw  # filled in place: one copy of the pixels fewer than building and CopyFrom
        raw.height, raw.width, raw.channels = pixels.shape
        raw.pixels = pixels.tobytes()
        item.prompt = prompts[offset]
        item.item_id = str(first_index + offset)
        if metadata[offset] is not None:
            item.metadata.update(metadata[offset])
        if branch[offset] is not None:
            item.branch.CopyFrom(reward_pb2.BranchIds(**branch[offset]))
    return request


def parse_score_response(body: bytes, reward: str, first_index: int, count: int) -> ChunkScores:
    """Decode a protobuf ScoreResponse for `count` items whose first has query index `first_index`.

    Raises RewardItemError if any item failed, and ValueError if the reply does not match the request.
    """
    response = reward_pb2.ScoreResponse.FromString(body)
    if len(response.scores) != count:
        raise ValueError(f"reward {reward!r}: reply holds {len(response.scores)} scores for {count} items")
    values = np.full(count, np.nan, dtype=np.float64)
    components: dict[str, np.ndarray] = {}
    failures: list[tuple[int, str, str]] = []
    for offset, score in enumerate(response.scores):
        index = first_index + offset
        if score.item_id and score.item_id != str(index):
            raise ValueError(f"reward {reward!r}: reply item {offset} echoes id {score.item_id!r}, sent {index}")
        if score.HasField("error") and (score.error.code or score.error.message):
            failures.append((index, score.error.code or "error", score.error.message))
            continue
        if not score.HasField("value"):
            failures.append((index, "missing_value", "the service returned no value and no error"))
            continue
        if not math.isfinite(score.value):
            failures.append((index, "non_finite_value", f"the service returned {score.value}"))
            continue
        values[offset] = score.value
        for name, part in score.components.items():
            components.setdefault(name, np.full(count, np.nan, dtype=np.float64))[offset] = part
    if failures:
        raise RewardItemError(reward, failures)
    return ChunkScores(values=values, components=components,
                       model=response.model if response.HasField("model") else None,
                       queue_ms=response.queue_ms, compute_ms=response.compute_ms)


def model_info_dict(info: reward_pb2.ModelInfo) -> dict[str, Any]:
    """ModelInfo as a plain dict (for logs), with every field present."""
    return json_format.MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
