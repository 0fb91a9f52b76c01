"""Shapes-world prompts: GenEval's metadata format for six tags, the shipped split, scenes that satisfy them."""
from __future__ import annotations

import numpy as np

from trainer.shapes_world.prompts import (HELDOUT_FILE, POSITIONS, TAGS, TRAIN_FILE, PromptSampler, TagMix,
                                          all_metadata, by_tag, read_jsonl, scene_for, split)
from trainer.shapes_world.render import CLASSES, COLORS
from trainer.shapes_world.text_encoder import ShapesTextEncoder, TextEncoderConfig


def test_every_tag_has_prompts_in_geneval_format():
    groups = by_tag(all_metadata())
    assert {tag: len(g) for tag, g in groups.items()} == {
        "single_object": 3, "two_object": 6, "counting": 9, "colors": 12, "position": 24, "color_attr": 72}
    for entry in all_metadata():
        assert set(entry) == ({"tag", "include", "prompt", "exclude"} if entry["tag"] == "counting"
                              else {"tag", "include", "prompt"})
        for clause in entry["include"]:
            assert clause["class"] in CLASSES and isinstance(clause["count"], int)
            assert set(clause) <= {"class", "count", "color", "position"}
            assert clause.get("color", "red") in COLORS


def test_geneval_prompt_wording_and_clauses():
    entries = {e["prompt"]: e for e in all_metadata()}
    assert entries["a photo of three triangles"]["include"] == [{"class": "triangle", "count": 3}]
    assert entries["a photo of three triangles"]["exclude"] == [{"class": "triangle", "count": 4}]
    assert entries["a photo of a circle left of a square"]["include"] == [
        {"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]
    assert entries["a photo of a red circle and a blue square"]["include"] == [
        {"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
    assert entries["a photo of a yellow triangle"]["tag"] == "colors"
    assert all(e["include"][1]["position"][0] in POSITIONS for e in by_tag(all_metadata())["position"])


def test_shipped_prompt_files_are_the_seeded_disjoint_split_of_all_prompts():
    train, heldout = read_jsonl(TRAIN_FILE), read_jsonl(HELDOUT_FILE)
    assert (train, heldout) == split(seed=0)
    train_prompts, heldout_prompts = {e["prompt"] for e in train}, {e["prompt"] for e in heldout}
    assert not train_prompts & heldout_prompts
    assert train_prompts | heldout_prompts == {e["prompt"] for e in all_metadata()}
    for tag in TAGS:
        assert by_tag(train)[tag] and by_tag(heldout)[tag]


def test_scenes_rendered_for_a_prompt_satisfy_it_under_geneval_rules():
    from trainer.shapes_world.evaluate import geneval_summary

    rng = np.random.default_rng(0)
    entries = all_metadata()
    images = np.stack([scene_for(e, rng).image for e in entries])
    summary, values = geneval_summary(images, entries)
    assert values == [1.0] * len(entries), [e["prompt"] for e, v in zip(entries, values) if v != 1.0]
    assert summary["overall"] == 1.0


def test_scenes_hold_exactly_the_counted_objects():
    rng = np.random.default_rng(1)
    for entry in by_tag(all_metadata())["counting"]:
        scene = scene_for(entry, rng)
        assert [o.cls for o in scene.objects] == [entry["include"][0]["class"]] * entry["include"][0]["count"]


def test_every_prompt_is_in_the_text_encoder_vocabulary():
    encoder = ShapesTextEncoder(TextEncoderConfig(width=8, layers=1, heads=2, pooled_dim=8))
    ids = encoder.tokenize([e["prompt"] for e in all_metadata()] + [""])
    assert ids.shape == (len(all_metadata()) + 1, encoder.config.max_length)


def test_sampler_draws_tags_in_proportion_to_the_mix():
    sampler = PromptSampler(all_metadata(), TagMix(single_object=3, two_object=0, counting=0, colors=1, position=0,
                                                   color_attr=0))
    rng = np.random.default_rng(0)
    tags = [sampler.sample(rng)["tag"] for _ in range(4000)]
    assert set(tags) == {"single_object", "colors"}
    assert abs(tags.count("single_object") / len(tags) - 0.75) < 0.03
