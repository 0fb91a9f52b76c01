"""Prompt files and the deterministic, resumable, rank-sharded order of prompt groups."""
from __future__ import annotations

import pytest
import torch

from trainer.prompt_data import PromptRecord, PromptSchedule, read_prompt_file


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(f"prompt {i}", None) for i in range(n)]


def test_plain_text_files_skip_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n# comment\na dog\n")
    assert read_prompt_file(path) == [PromptRecord("a cat", None), PromptRecord("a dog", None)]


def test_jsonl_keys_other_than_prompt_become_metadata(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "two cats", "tag": "counting", "include": [{"class": "cat", "count": 2}]}\n')
    assert read_prompt_file(path) == [
        PromptRecord("two cats", {"tag": "counting", "include": [{"class": "cat", "count": 2}]})]


def test_a_jsonl_line_without_prompt_is_an_error_with_its_line_number(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"tag": "x"}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_prompt_file(path)


def test_the_order_depends_only_on_the_seed():
    a = PromptSchedule(records(5), seed=3, groups_per_epoch=4)
    b = PromptSchedule(records(5), seed=3, groups_per_epoch=4)
    c = PromptSchedule(records(5), seed=4, groups_per_epoch=4)
    firsts = [[a.group_record(n) for n in range(20)], [b.group_record(n) for n in range(20)],
              [c.group_record(n) for n in range(20)]]
    assert firsts[0] == firsts[1] and firsts[0] != firsts[2]


def test_every_pass_visits_each_prompt_once():
    schedule = PromptSchedule(records(5), seed=1, groups_per_epoch=5)
    for pass_index in range(3):
        seen = [schedule.group_record(pass_index * 5 + i).prompt for i in range(5)]
        assert sorted(seen) == sorted(r.prompt for r in records(5))


def test_a_restored_position_continues_the_same_sequence():
    straight = PromptSchedule(records(7), seed=2, groups_per_epoch=3)
    for _ in range(4):
        straight.advance_epoch()
    restored = PromptSchedule(records(7), seed=2, groups_per_epoch=3)
    restored.load_state_dict(straight.state_dict())
    assert restored.epoch_groups() == straight.epoch_groups()


def test_ranks_take_contiguous_blocks_that_concatenate_to_the_single_process_epoch():
    single = PromptSchedule(records(9), seed=0, groups_per_epoch=4)
    single.advance_epoch()
    ranks = [PromptSchedule(records(9), seed=0, groups_per_epoch=4) for _ in range(2)]
    for schedule in ranks:
        schedule.advance_epoch()
    joined = ranks[0].epoch_groups(0, 2) + ranks[1].epoch_groups(1, 2)
    assert joined == single.epoch_groups()


def test_a_checkpoint_from_another_prompt_set_is_refused():
    schedule = PromptSchedule(records(4), seed=0, groups_per_epoch=2)
    with pytest.raises(ValueError, match="prompts"):
        schedule.load_state_dict({**schedule.state_dict(), "num_prompts": 5})


def tagged_records() -> list[PromptRecord]:
    """A skewed file: 6 prompts of tag a, 2 of b, 1 of c."""
    return [PromptRecord(f"{tag}{i}", {"tag": tag}) for tag, n in (("a", 6), ("b", 2), ("c", 1)) for i in range(n)]


def test_balancing_by_a_metadata_key_trains_every_value_equally_often():
    schedule = PromptSchedule(tagged_records(), seed=5, groups_per_epoch=3, balance_by="tag")
    drawn = [schedule.group_record(n) for n in range(36)]
    for block in range(12):
        assert sorted(r.metadata["tag"] for r in drawn[3 * block:3 * block + 3]) == ["a", "b", "c"]
    a_prompts = [r.prompt for r in drawn if r.metadata["tag"] == "a"]
    assert sorted(a_prompts[:6]) == sorted(a_prompts[6:]) == [f"a{i}" for i in range(6)]  # passes within a value


def test_the_unbalanced_order_is_unchanged_by_the_balancing_option():
    plain = PromptSchedule(tagged_records(), seed=5, groups_per_epoch=3)
    assert [plain.group_record(n).prompt for n in range(9)] == [
        tagged_records()[i].prompt for i in torch.randperm(9, generator=torch.Generator().manual_seed(5 * 1_000_003))]


def test_balancing_needs_the_key_on_every_prompt_and_survives_a_restore():
    with pytest.raises(ValueError, match="has no metadata key 'tag'"):
        PromptSchedule(tagged_records() + [PromptRecord("bare", None)], seed=0, groups_per_epoch=1, balance_by="tag")
    straight = PromptSchedule(tagged_records(), seed=1, groups_per_epoch=4, balance_by="tag")
    straight.advance_epoch()
    restored = PromptSchedule(tagged_records(), seed=1, groups_per_epoch=4, balance_by="tag")
    restored.load_state_dict(straight.state_dict())
    assert restored.epoch_groups() == straight.epoch_groups()
    with pytest.raises(ValueError, match="balance_by"):
        PromptSchedule(tagged_records(), seed=1, groups_per_epoch=4).load_state_dict(straight.state_dict())
