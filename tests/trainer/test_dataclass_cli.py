"""trainer.dataclass_cli: a config dataclass as `--field-name` flags whose help is the field's comment."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from trainer.dataclass_cli import add_dataclass_arguments, dataclass_from_namespace, field_comments


@dataclass
class Inner:
    width: int = 3  # width of the thing, pixels


@dataclass
class Outer:
    name: str = "a"  # what it is called
    rate: float = 0.5  # how fast, per second
    enabled: bool = True  # whether it runs
    inner: Inner = field(default_factory=Inner)  # nested settings
    extra: list = field(default_factory=list)  # set by the caller, not a flag


def parser_for(cls, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, cls, **kwargs)
    return parser


def test_each_field_comment_is_its_flag_help():
    assert field_comments(Outer)["rate"] == "how fast, per second"
    help_text = parser_for(Outer, skip=("extra",)).format_help()
    assert "how fast, per second (default: 0.5)" in help_text
    assert "--inner-width" in help_text and "width of the thing, pixels" in help_text
    assert "--extra" not in help_text


def test_flags_round_trip_into_the_dataclass_with_nested_fields_and_overrides():
    args = parser_for(Outer, skip=("extra",)).parse_args(["--rate", "2", "--enabled", "false", "--inner-width", "7"])
    config = dataclass_from_namespace(Outer, vars(args), extra=["x"])
    assert config == Outer(name="a", rate=2.0, enabled=False, inner=Inner(width=7), extra=["x"])


def test_no_flags_gives_the_defaults():
    assert dataclass_from_namespace(Outer, vars(parser_for(Outer, skip=("extra",)).parse_args([])), extra=[]) == Outer()


def test_a_bool_flag_rejects_what_is_not_true_or_false(capsys):
    with pytest.raises(SystemExit):
        parser_for(Outer, skip=("extra",)).parse_args(["--enabled", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_the_shapes_world_clis_document_every_flag():
    from trainer.shapes_world.demo import DemoConfig
    from trainer.shapes_world.evaluate import EvalConfig
    from trainer.shapes_world.pretrain import PretrainConfig

    for cls, skip in ((DemoConfig, ("trainer_flags",)), (EvalConfig, ()), (PretrainConfig, ())):
        parser = parser_for(cls, skip=skip)
        undocumented = [a.option_strings for a in parser._actions if a.option_strings != ["-h", "--help"]
                        and not a.help]
        assert undocumented == [], cls.__name__
