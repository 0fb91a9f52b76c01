"""Held-out evaluation: sampling through a FlowModel, then GenEval strict scoring per tag with the shapes detector.

An oracle FlowModel whose velocity flows exactly to a scene rendered for each prompt must score 1 on every tag; one
that flows to a blank canvas must score 0. The same holds for the partial credit the CLI adds with `--partial`."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from trainer.models.base import Conditioning, FlowModel
from trainer.shapes_world import evaluate as evaluate_module
from trainer.shapes_world.evaluate import EvalConfig, evaluate, geneval_summary
from trainer.shapes_world.pixels import from_pixels, to_pixels
from trainer.shapes_world.prompts import TAGS, all_metadata, scene_for


class OracleFlowModel(FlowModel):
    """v(x, sigma) = (x - target) / sigma: the exact rectified-flow velocity towards a fixed image per prompt."""

    def __init__(self, targets: dict[str, torch.Tensor]):
        self.device = torch.device("cpu")
        self.targets = targets  # prompt -> [3, 32, 32] in [-1, 1]
        self.prompts: list[str] = []

    def encode_prompts(self, prompts, with_negative):
        index = torch.tensor([self._index(p) for p in prompts], dtype=torch.float32)[:, None, None]
        return Conditioning(prompt_embeds=index, pooled=index[:, 0], negative_prompt_embeds=index if with_negative
                            else None, negative_pooled=index[:, 0] if with_negative else None)

    def _index(self, prompt):
        if prompt not in self.prompts:
            self.prompts.append(prompt)
        return self.prompts.index(prompt)

    def latent_shape(self):
        return (3, 32, 32)

    def velocity(self, x, sigma, cond, guidance_scale):
        target = torch.stack([self.targets[self.prompts[int(i)]] for i in cond.pooled[:, 0]])
        return (x - target) / float(sigma)

    def decode(self, x):
        return from_pixels(x)

    def trainable_parameters(self):
        return []

    def reference(self):
        return contextlib.nullcontext()

    def lora_state_dict(self):
        return {}

    def load_lora_state_dict(self, state):
        pass

    def save_lora(self, directory):
        pass


def targets(blank: bool) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    out = {}
    for entry in all_metadata():
        image = np.full((32, 32, 3), 255, np.uint8) if blank else scene_for(entry, rng).image
        out[entry["prompt"]] = to_pixels(torch.from_numpy(image)[None])[0]
    return out


@pytest.mark.parametrize("blank, expected", [(False, 1.0), (True, 0.0)])
def test_evaluation_scores_what_the_model_draws(blank, expected):
    summary, images, entries = evaluate(OracleFlowModel(targets(blank)), EvalConfig(samples=2, steps=4, guidance=2.0))
    assert images.shape == (len(entries), 32, 32, 3) and len(entries) == 2 * 42
    assert set(summary) == {*TAGS, "overall"}
    assert all(value == expected for value in summary.values())


def test_partial_credit_of_the_same_images_is_full_for_the_asked_scene():
    _, images, entries = evaluate(OracleFlowModel(targets(False)), EvalConfig(samples=1, steps=4, guidance=2.0))
    partial, values = geneval_summary(images, entries, "partial")
    assert len(values) == len(entries) and partial == {tag: 1.0 for tag in [*TAGS, "overall"]}


def test_partial_credit_of_a_blank_image_is_only_the_counting_prompts_exclude_term():
    # "two circles" = include circle x2 (count term 0 of 1) + exclude circle x3 (holds when none is drawn): 1/2
    _, images, entries = evaluate(OracleFlowModel(targets(True)), EvalConfig(samples=1, steps=4, guidance=2.0))
    partial, _ = geneval_summary(images, entries, "partial")
    assert partial == {**{tag: 0.0 for tag in TAGS}, "counting": 0.5, "overall": 0.5 / len(TAGS)}


def test_the_cli_reports_partial_credit_beside_strict_accuracy_when_asked(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_module, "load_model", lambda model_dir, lora_dir: OracleFlowModel(targets(False)))
    evaluate_module.main(["--samples", "1", "--steps", "4"])
    assert set(json.loads(capsys.readouterr().out)) == {"heldout_strict", "config"}
    evaluate_module.main(["--samples", "1", "--steps", "4", "--partial", "true"])
    report = json.loads(capsys.readouterr().out)
    assert report["heldout_partial"] == report["heldout_strict"] == {tag: 1.0 for tag in [*TAGS, "overall"]}
