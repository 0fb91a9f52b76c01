"""Hot swap of the reward config file: RewardSet.reload_if_changed between steps."""
import os

import pytest

from trainer.rewards.config_file import RewardConfigError
from trainer.rewards.reward_set import RewardSet
from trainer.rewards.spec import MixingMode

TWO_REWARDS = ("rewards:\n  - {name: pickscore, url: 'http://a:1', weight: 1.0}\n"
               "  - {name: geneval, url: 'http://b:1', weight: 0.5}\n")


def write(path, text):
    """Write and push the mtime forward, so a rewrite within the filesystem's time resolution is still seen."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "rewards.yaml"
    write(path, TWO_REWARDS)
    return path


def test_an_untouched_file_reports_no_change(config_path):
    rewards = RewardSet.from_file(config_path)
    result = rewards.reload_if_changed()
    assert not result and result.description == "" and result.error is None


def test_reweighting_takes_effect_and_is_described(config_path):
    rewards = RewardSet.from_file(config_path)
    write(config_path, TWO_REWARDS.replace("weight: 0.5", "weight: 2.0"))
    result = rewards.reload_if_changed()
    assert result.changed
    assert "reward 'geneval': weight 0.5 -> 2.0" in result.description
    assert rewards.mixer().weights == {"pickscore": 1.0, "geneval": 2.0}


def test_adding_and_removing_rewards_and_switching_mode_are_described(config_path):
    rewards = RewardSet.from_file(config_path)
    write(config_path, "mixing: normalize_then_sum\nrewards:\n"
                       "  - {name: pickscore, url: 'http://a:1'}\n  - {name: hpsv3, url: 'http://c:1', weight: 3}\n")
    result = rewards.reload_if_changed()
    assert "added reward 'hpsv3' (weight 3.0, http://c:1)" in result.description
    assert "removed reward 'geneval'" in result.description
    assert "mixing sum_then_normalize -> normalize_then_sum" in result.description
    assert rewards.config.mixing is MixingMode.NORMALIZE_THEN_SUM
    assert [r.name for r in rewards.config.rewards] == ["pickscore", "hpsv3"]


def test_a_rewrite_with_the_same_content_is_not_a_change(config_path):
    rewards = RewardSet.from_file(config_path)
    write(config_path, TWO_REWARDS)
    assert not rewards.reload_if_changed()


def test_a_broken_file_keeps_the_previous_set_and_reports_the_error_once(config_path):
    rewards = RewardSet.from_file(config_path)
    before = rewards.config
    write(config_path, "rewards: [ {name: pickscore, url: 'http://a:1'\n")
    result = rewards.reload_if_changed()
    assert not result.changed and "not valid YAML" in result.error
    assert "kept the previous reward set" in result.description
    assert rewards.config is before
    assert rewards.reload_if_changed().error is None  # the same broken file is not reported every step
    write(config_path, TWO_REWARDS.replace("weight: 1.0", "weight: 0.25"))
    assert rewards.reload_if_changed().changed  # fixing the file is picked up


def test_a_deleted_file_keeps_the_previous_set(config_path):
    rewards = RewardSet.from_file(config_path)
    config_path.unlink()
    result = rewards.reload_if_changed()
    assert "cannot read reward config" in result.error and rewards.config.weights()["geneval"] == 0.5


def test_starting_from_a_broken_file_fails_loudly(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text("rewards: []\n")
    with pytest.raises(RewardConfigError, match="rewards"):
        RewardSet.from_file(path)


def test_a_set_built_from_flags_has_nothing_to_reload():
    rewards = RewardSet.from_flags(["name=a,url=http://a:1,weight=0.3"])
    assert not rewards.reload_if_changed() and rewards.config.weights() == {"a": 0.3}
