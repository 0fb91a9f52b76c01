"""Wire codec of the reward schema: proto <-> JSON on one route, and image decoding with size limits.

- Requests arrive as `application/x-protobuf` (the trainer) or `application/json` (proto3 canonical JSON, bytes as
  base64; what curl sends); `Accept` picks the reply's encoding (default: the request's).
- Malformed requests raise `RequestError` (status, code, message, field path such as "items[2].image.raw.pixels").
- Each item is decoded on its own (`decode_item`); a bad item raises `ItemRejected` and fails that item only.
- Raw uint8 pixels skip codecs (a zero-copy view); encoded PNG/JPEG/WebP are sniffed from their magic bytes and
  their header size is checked against `max_image_pixels` before any pixel is decompressed (no decompression bombs).
"""
from __future__ import annotations

import base64
import io
import json
import re
import warnings
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from PIL import Image

from protos.reward.v1 import reward_pb2
from services.common.scorer import ScorerInput

JSON = "json"
PROTOBUF = "protobuf"
MEDIA_TYPES = {JSON: "application/json", PROTOBUF: "application/x-protobuf"}
_PROTOBUF_ALIASES = ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_PARSE_CHAIN = re.compile(r"Failed to parse (\w+) field: ")


class RequestError(Exception):
    """A request the service cannot accept as a whole (4xx); `field` names the offending field path."""

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def to_proto(self) -> reward_pb2.ErrorResponse:
        return reward_pb2.ErrorResponse(code=self.code, message=self.message, field=self.field)


class ItemRejected(Exception):
    """One item that cannot be scored; fails that item only. `field` names the offending field path."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field
        self.message = f"{field}: {message}"


def wire_format_of(content_type: str | None) -> str | None:
    """The wire format a Content-Type names, or None when it is neither JSON nor protobuf."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return JSON
    if media in _PROTOBUF_ALIASES:
        return PROTOBUF
    return None


def reply_format(accept: str | None, request_format: str | None) -> str:
    """Encoding of the reply: what Accept asks for, else the request's own encoding, else JSON."""
    accept = (accept or "").lower()
    if any(alias in accept for alias in _PROTOBUF_ALIASES):
        return PROTOBUF
    if "application/json" in accept:
        return JSON
    return request_format or JSON


def encode_message(message: Message, fmt: str) -> bytes:
    """Serialise a schema message as protobuf bytes or proto3 canonical JSON."""
    if fmt == PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


def _field_from_parse_error(error: Exception, prefix: str, document: Any) -> tuple[str, str]:
    """Turn json_format's "Failed to parse a field: Failed to parse b field: why" into ("prefix.a.b", why).

    json_format leaves out some levels (e.g. the oneof member `raw`), so each name is looked up in the document
    and a level it skipped is filled in from the document's keys."""
    text = str(error)
    names = _PARSE_CHAIN.findall(text)
    reason = _PARSE_CHAIN.sub("", text).rstrip(".")
    parts, node = ([prefix] if prefix else []), document
    for name in names:
        if isinstance(node, dict) and name not in node:
            skipped = next((key for key, child in node.items() if isinstance(child, dict) and name in child), None)
            if skipped is not None:
                parts.append(skipped)
                node = node[skipped]
        parts.append(name)
        node = node.get(name) if isinstance(node, dict) else None
    return ".".join(parts), reason


def _check_base64(item: Any, index: int) -> None:
    """json_format accepts any text as bytes; reject text that is not base64 and say which field it is."""
    if not isinstance(item, dict) or not isinstance(item.get("image"), dict):
        return
    image = item["image"]
    for kind, key in (("raw", "pixels"), ("encoded", "data")):
        part = image.get(kind)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            text = part[key]
            if len(text.rstrip("=")) % 4 == 1 or not _BASE64.match(text):
                raise RequestError(400, "invalid_base64", f"items[{index}].image.{kind}.{key}: not valid base64",
                                   f"items[{index}].image.{kind}.{key}")


def parse_score_request(body: bytes, fmt: str) -> reward_pb2.ScoreRequest:
    """Parse a ScoreRequest body in the given wire format; RequestError names the offending field."""
    if fmt == PROTOBUF:
        request = reward_pb2.ScoreRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            raise RequestError(400, "invalid_request", f"body is not a valid protobuf ScoreRequest: {error}") from error
        return request
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RequestError(400, "invalid_request", "body must be a JSON object (a ScoreRequest)")
    items = document.pop("items", [])
    if not isinstance(items, list):
        raise RequestError(400, "invalid_request", "items: must be a list", "items")
    request = reward_pb2.ScoreRequest()
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as error:
        field, reason = _field_from_parse_error(error, "", document)
        raise RequestError(400, "invalid_request", f"{field or 'body'}: {reason}", field) from error
    for index, item in enumerate(items):
        _check_base64(item, index)
        try:
            json_format.ParseDict(item, request.items.add())
        except json_format.ParseError as error:
            field, reason = _field_from_parse_error(error, f"items[{index}]", item)
            raise RequestError(400, "invalid_request", f"{field}: {reason}", field) from error
    return request


def _sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _decode_raw(raw: reward_pb2.RawImage, field: str, max_image_pixels: int) -> np.ndarray:
    height, width, channels = raw.height, raw.width, raw.channels
    if height == 0 or width == 0:
        raise ItemRejected("invalid_image", f"{field}.raw", f"zero-size image ({height}x{width})")
    if height * width > max_image_pixels:
        raise ItemRejected("image_too_large", f"{field}.raw",
                           f"{height}x{width} = {height * width} pixels exceeds max_image_pixels={max_image_pixels}")
    if channels not in (1, 3, 4):
        raise ItemRejected("invalid_image", f"{field}.raw.channels", f"channels must be 1, 3 or 4, got {channels}")
    expected = height * width * channels
    if len(raw.pixels) != expected:
        raise ItemRejected("invalid_image", f"{field}.raw.pixels",
                           f"{len(raw.pixels)} bytes, expected height*width*channels = "
                           f"{height}*{width}*{channels} = {expected}")
    pixels = np.frombuffer(raw.pixels, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 4:
        return pixels[:, :, :3]
    return pixels


def _decode_encoded(encoded: reward_pb2.EncodedImage, field: str, max_image_pixels: int) -> np.ndarray:
    data = encoded.data
    path = f"{field}.encoded.data"
    if not data:
        raise ItemRejected("invalid_image", path, "empty image data")
    kind = _sniff_format(data)
    if kind is None:
        raise ItemRejected("invalid_image", path, "not a PNG, JPEG or WebP file (unrecognised magic bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                width, height = image.size  # read from the header only; nothing is decompressed yet
                if width == 0 or height == 0:
                    raise ItemRejected("invalid_image", path, f"zero-size {kind} image ({height}x{width})")
                if width * height > max_image_pixels:
                    raise ItemRejected("image_too_large", path,
                                       f"{kind} header says {height}x{width} = {width * height} pixels, exceeds "
                                       f"max_image_pixels={max_image_pixels} (not decoded)")
                image.load()
                return np.asarray(image.convert("RGB"))
    except ItemRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ItemRejected("image_too_large", path, f"decompression bomb refused: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ItemRejected("invalid_image", path, f"corrupt or truncated {kind} file: {error}") from error


def decode_image(image: reward_pb2.Image, field: str, max_image_pixels: int) -> np.ndarray:
    """Decode one Image message to HxWx3 uint8 RGB, or raise ItemRejected naming the field."""
    kind = image.WhichOneof("kind")
    if kind == "raw":
        return _decode_raw(image.raw, field, max_image_pixels)
    if kind == "encoded":
        return _decode_encoded(image.encoded, field, max_image_pixels)
    raise ItemRejected("invalid_image", field, "no image (set image.raw or image.encoded)")


def decode_item(item: reward_pb2.ScoreItem, index: int, max_image_pixels: int) -> ScorerInput:
    """Validate and decode one request item into a ScorerInput; ItemRejected fails this item only."""
    prefix = f"items[{index}]"
    if not item.prompt.strip():
        raise ItemRejected("invalid_prompt", f"{prefix}.prompt", "missing or empty prompt")
    if not item.HasField("image"):
        raise ItemRejected("invalid_image", f"{prefix}.image", "missing image")
    pixels = decode_image(item.image, f"{prefix}.image", max_image_pixels)
    metadata = json_format.MessageToDict(item.metadata) if item.HasField("metadata") else None
    return ScorerInput(image=pixels, prompt=item.prompt, metadata=metadata)


def raw_image(pixels: np.ndarray) -> reward_pb2.Image:
    """An Image message holding HxWxC (or HxW) uint8 pixels raw: what clients should send (no codec)."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    return reward_pb2.Image(raw=reward_pb2.RawImage(height=height, width=width, channels=channels,
                                                    pixels=array.tobytes()))


def encoded_image(data: bytes) -> reward_pb2.Image:
    """An Image message holding an encoded PNG/JPEG/WebP file."""
    return reward_pb2.Image(encoded=reward_pb2.EncodedImage(data=data))


def base64_text(data: bytes) -> str:
    """Standard base64 text of bytes, as proto3 JSON writes a bytes field."""
    return base64.b64encode(data).decode("ascii")


__all__ = [
    "JSON", "PROTOBUF", "MEDIA_TYPES", "RequestError", "ItemRejected", "wire_format_of", "reply_format",
    "encode_message", "parse_score_request", "decode_image", "decode_item", "raw_image", "encoded_image",
    "base64_text",
]
