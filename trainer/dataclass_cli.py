"""Command-line flags from a config dataclass: one `--field-name` per field, its help the field's one-line comment.

The small CLIs of the shapes world (pretrain, evaluate, demo) expose their config dataclasses this way, so a field's
comment is both its documentation in the code and its `--help` line. A nested dataclass field `mix: TagMix` becomes
`--mix-<field>` flags. The trainer's sectioned CLI (trainer.config.build_parser) is built from `knob` help metadata
instead; a field carrying such metadata here uses it too.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any, TypeVar

T = TypeVar("T")

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its trailing `# comment`} read from the class source ({} when the source is unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2) for m in map(_FIELD_COMMENT.match, source.splitlines()) if m}


def parse_bool(text: str) -> bool:
    """'true/false', 'yes/no', '1/0' (any case) as a bool; anything else is a usage error."""
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value, calling its default_factory when it has one."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            skip: tuple[str, ...] = ()) -> None:
    """Add `--<prefix><field>` for every field of `cls` (except `skip`), typed by its default's type."""
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = field_default(f)
        if dataclasses.is_dataclass(default):
            add_dataclass_arguments(parser, type(default), prefix=f"{prefix}{f.name}_")
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        help_text = f.metadata.get("help") or comments.get(f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, type=parse_bool, default=default, metavar="BOOL", help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def dataclass_from_namespace(cls: type[T], values: dict[str, Any], prefix: str = "", **overrides: Any) -> T:
    """An instance of `cls` from parsed flag values (argparse dests, as added by add_dataclass_arguments)."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            continue
        default = field_default(f)
        if dataclasses.is_dataclass(default):
            kwargs[f.name] = dataclass_from_namespace(type(default), values, prefix=f"{prefix}{f.name}_")
        else:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs, **overrides)
