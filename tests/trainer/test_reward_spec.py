"""Reward specs from CLI flags and from YAML/JSON reward config files."""
import json

import pytest
from pydantic import ValidationError

from trainer.rewards.config_file import RewardConfigError, load_reward_config
from trainer.rewards.spec import MixingMode, RewardSetConfig, RewardSpec, parse_reward_flag, specs_from_flags


def test_bare_url_flag_is_one_reward_named_after_its_host_with_weight_one():
    spec = parse_reward_flag("http://10.0.0.5:8000/")
    assert (spec.name, spec.urls, spec.weight) == ("10.0.0.5:8000", ("http://10.0.0.5:8000",), 1.0)


def test_key_value_flag_sets_name_weight_timeout_and_replicas():
    spec = parse_reward_flag("name=pickscore,url=http://a:1,url=http://b:2,weight=0.5,timeout_s=3")
    assert spec.name == "pickscore"
    assert spec.urls == ("http://a:1", "http://b:2")
    assert spec.weight == 0.5 and spec.timeout_s == 3.0


def test_component_flag_takes_a_named_part_of_the_reply_as_the_reward():
    specs = specs_from_flags(["name=strict,url=http://a:1,component=strict,weight=0.5",
                              "name=partial,url=http://a:1,component=partial,weight=0.5"])
    assert [(s.name, s.component, s.weight) for s in specs] == [("strict", "strict", 0.5), ("partial", "partial", 0.5)]
    assert parse_reward_flag("http://a:1").component is None  # the reply's value


def test_flag_without_url_or_with_unknown_key_is_rejected():
    with pytest.raises(ValueError, match="no url"):
        parse_reward_flag("name=pickscore,weight=2")
    with pytest.raises(ValidationError):
        parse_reward_flag("name=pickscore,url=http://a:1,colour=red")


def test_two_flags_for_the_same_host_need_distinct_names():
    with pytest.raises(ValueError, match="unique"):
        specs_from_flags(["http://a:1", "http://a:1,weight=2"])


def test_url_must_be_http():
    with pytest.raises(ValidationError, match="http://host:port"):
        RewardSpec(name="x", urls=["a:1"])


def test_api_key_env_reads_the_variable_and_fails_clearly_when_unset(monkeypatch):
    spec = RewardSpec(name="geneval", url="http://a:1", api_key_env="GENEVAL_TOKEN_FOR_TEST")
    monkeypatch.delenv("GENEVAL_TOKEN_FOR_TEST", raising=False)
    with pytest.raises(ValueError, match="GENEVAL_TOKEN_FOR_TEST"):
        spec.bearer_token()
    monkeypatch.setenv("GENEVAL_TOKEN_FOR_TEST", "s3cret")
    assert spec.bearer_token() == "s3cret"


def test_yaml_config_file_carries_rewards_mixing_and_retry(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text("mixing: normalize_then_sum\nretry: {deadline_s: 7}\nrewards:\n"
                    "  - {name: pickscore, url: 'http://a:1', weight: 0.5}\n"
                    "  - {name: geneval, urls: ['http://b:1', 'http://b:2']}\n")
    config = load_reward_config(path).config
    assert config.mixing is MixingMode.NORMALIZE_THEN_SUM
    assert config.retry.deadline_s == 7
    assert config.weights() == {"pickscore": 0.5, "geneval": 1.0}
    assert config.rewards[1].urls == ("http://b:1", "http://b:2")


def test_json_config_file_is_accepted(tmp_path):
    path = tmp_path / "rewards.json"
    path.write_text(json.dumps({"rewards": [{"name": "a", "url": "http://a:1", "weight": 2}]}))
    assert load_reward_config(path).config == RewardSetConfig(rewards=[RewardSpec(name="a", urls=["http://a:1"],
                                                                                  weight=2)])


def test_invalid_config_file_error_names_the_file_and_field(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text("rewards:\n  - {name: a, url: 'http://a:1', weight: heavy}\n")
    with pytest.raises(RewardConfigError, match=r"rewards\.yaml: rewards\.0\.weight"):
        load_reward_config(path)


def test_duplicate_reward_names_in_a_file_are_rejected(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text("rewards:\n  - {name: a, url: 'http://a:1'}\n  - {name: a, url: 'http://b:1'}\n")
    with pytest.raises(RewardConfigError, match="repeated: a"):
        load_reward_config(path)
