"""RewardMixer: the two mixing modes against their formulas, and the refusal to mix a missing reward."""
import numpy as np
import pytest
import torch

from trainer.rewards.mixer import MissingRewardError, RewardMixer, group_normalize
from trainer.rewards.spec import MixingMode

RAW = {"a": torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.4], dtype=torch.float64),
       "b": torch.tensor([10.0, 30.0, 20.0, 5.0, 5.0, 50.0], dtype=torch.float64)}
GROUP = torch.tensor([0, 0, 0, 1, 1, 1])
WEIGHTS = {"a": 0.7, "b": -0.2}


def numpy_group_normalize(values, group, eps=1e-4):
    out = np.empty_like(values)
    for g in np.unique(group):
        rows = group == g
        out[rows] = (values[rows] - values[rows].mean()) / (values[rows].std() + eps)  # numpy std: ddof=0
    return out


def test_sum_then_normalize_is_the_weighted_sum_of_raw_rewards():
    mixed = RewardMixer(WEIGHTS, MixingMode.SUM_THEN_NORMALIZE).mix(RAW, GROUP)
    expected = 0.7 * RAW["a"].numpy() - 0.2 * RAW["b"].numpy()
    np.testing.assert_allclose(mixed.mixed.numpy(), expected, rtol=1e-12)


def test_normalize_then_sum_normalises_each_reward_per_group_then_weights():
    mixed = RewardMixer(WEIGHTS, "normalize_then_sum").mix(RAW, GROUP)
    expected = (0.7 * numpy_group_normalize(RAW["a"].numpy(), GROUP.numpy())
                - 0.2 * numpy_group_normalize(RAW["b"].numpy(), GROUP.numpy()))
    np.testing.assert_allclose(mixed.mixed.numpy(), expected, rtol=1e-10)


def test_contributions_sum_to_the_mix_and_raw_scores_are_kept():
    for mode in MixingMode:
        mixed = RewardMixer(WEIGHTS, mode).mix(RAW, GROUP)
        torch.testing.assert_close(mixed.contributions["a"] + mixed.contributions["b"], mixed.mixed)
        assert torch.equal(mixed.raw["b"], RAW["b"])
        assert mixed.weights == WEIGHTS and mixed.mode is mode


def test_group_normalize_of_a_constant_group_is_zero_not_nan():
    out = group_normalize(torch.tensor([3.0, 3.0, 1.0]), torch.tensor([0, 0, 1]), eps=1e-4)
    assert torch.equal(out, torch.zeros(3))


def test_a_missing_reward_value_refuses_to_mix():
    raw = {"a": RAW["a"].clone(), "b": RAW["b"]}
    raw["a"][4] = float("nan")
    with pytest.raises(MissingRewardError, match=r"reward 'a' has no value for item\(s\) \[4\]"):
        RewardMixer(WEIGHTS).mix(raw, GROUP)


def test_a_reward_without_any_scores_refuses_to_mix():
    with pytest.raises(MissingRewardError, match="'b'"):
        RewardMixer(WEIGHTS).mix({"a": RAW["a"]}, GROUP)


def test_log_metrics_report_each_reward_raw_mean_contribution_and_weight():
    metrics = RewardMixer(WEIGHTS).mix(RAW, GROUP).log_metrics()
    assert metrics["reward/a/raw_mean"] == pytest.approx(float(RAW["a"].mean()))
    assert metrics["reward/b/contribution_mean"] == pytest.approx(-0.2 * float(RAW["b"].mean()))
    assert metrics["reward/b/weight"] == -0.2
