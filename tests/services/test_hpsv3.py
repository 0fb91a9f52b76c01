"""HPSv3 service: the published checkpoint layout, the loading code, the scoring conversation, the real service.

A tiny Qwen2-VL + head is built from config and saved in the published layout (services.hpsv3.tiny); everything
below loads it through the same code that loads the real HPSv3.safetensors.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors import safe_open

from services.common.scorer import ScorerInput, WeightsNotFoundError
from services.hpsv3.loading import CHECKPOINT_FILE, load_image_processor, load_tokenizer, resolve_checkpoint
from services.hpsv3.model import current_to_published, published_to_current
from services.hpsv3.prompt import IMAGE_PAD, PIXELS, REWARD_TOKEN, conversation, expand_image_pads
from services.hpsv3.scorer import HPSv3Config, HPSv3Scorer
from services.hpsv3.tiny import build_tiny_hpsv3
from tests.support.service_process import REPO_ROOT, running_service

torch.set_num_threads(1)

# The head's keys in MizzenAI/HPSv3's HPSv3.safetensors: upstream's ranknet head is
# nn.Sequential(Linear, ReLU, Dropout, Linear, ReLU, Linear), so its Linears sit at indices 0, 3 and 5
# (hpsv3/model/qwen2vl_trainer.py, Qwen2VLRewardModelBT.__init__, rm_head_kwargs None as in HPSv3_7B.yaml).
UPSTREAM_HEAD_KEYS = {"rm_head.0.weight", "rm_head.0.bias", "rm_head.3.weight", "rm_head.3.bias",
                      "rm_head.5.weight", "rm_head.5.bias"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"))


@pytest.fixture(scope="module")
def scorer(tiny) -> HPSv3Scorer:
    base, checkpoint = tiny
    loaded = HPSv3Scorer(HPSv3Config(model=str(base), checkpoint=str(checkpoint)))
    loaded.setup()
    return loaded


def checkpoint_keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())


def random_image(seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_saved_head_keys_are_the_published_ones(tiny):
    keys = checkpoint_keys(tiny[1])
    assert {key for key in keys if key.startswith("rm_head.")} == UPSTREAM_HEAD_KEYS


def test_saved_backbone_uses_the_transformers_4_45_prefixes(tiny):
    keys = checkpoint_keys(tiny[1])
    assert {key.split(".")[0] for key in keys} == {"visual", "model", "lm_head", "rm_head"}
    assert not any(key.startswith(("model.language_model.", "model.visual.")) for key in keys)
    assert "model.embed_tokens.weight" in keys and "visual.patch_embed.proj.weight" in keys


def test_key_mapping_round_trips_and_leaves_new_layout_keys_alone():
    published = {"visual.blocks.0.attn.qkv.weight": 1, "model.layers.0.mlp.up_proj.weight": 2,
                 "model.embed_tokens.weight": 3, "lm_head.weight": 4, "rm_head.5.weight": 5}
    current = published_to_current(published)
    assert current == {"model.visual.blocks.0.attn.qkv.weight": 1, "model.language_model.layers.0.mlp.up_proj.weight": 2,
                       "model.language_model.embed_tokens.weight": 3, "lm_head.weight": 4, "rm_head.5.weight": 5}
    assert current_to_published(current) == published
    assert published_to_current(current) == current


def test_embeddings_are_sized_to_the_tokenizer_with_the_reward_token(tiny):
    base, checkpoint = tiny
    tokenizer = load_tokenizer(base)
    with safe_open(str(checkpoint), "pt") as handle:
        assert handle.get_slice("model.embed_tokens.weight").get_shape()[0] == len(tokenizer)
        assert handle.get_slice("lm_head.weight").get_shape()[0] == len(tokenizer)


def test_head_is_float32_after_loading(scorer):
    assert {parameter.dtype for parameter in scorer.loaded.model.rm_head.parameters()} == {torch.float32}


def test_conversation_holds_instruction_prompt_and_one_reward_token(tiny):
    tokenizer = load_tokenizer(tiny[0])
    text = tokenizer.apply_chat_template(conversation("a red apple"), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>\nYou are tasked with evaluating")
    assert "Textual prompt - a red apple\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n" \
        "<|im_end|>\n<|im_start|>assistant\n" in text
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(REWARD_TOKEN)) == 1


def test_images_are_resized_to_the_published_pixel_budget():
    processor = load_image_processor()
    grids = processor(images=[random_image(0, 512, 512), random_image(1, 300, 700)], return_tensors="pt")
    grids = grids["image_grid_thw"]
    assert grids[0].tolist() == [1, 32, 32]  # 448 x 448 = 256 * 28 * 28 pixels, 256 tokens after the 2x2 merge
    for grid in grids:
        pixels = int(grid[1]) * 14 * int(grid[2]) * 14
        assert pixels <= PIXELS and pixels > 0.9 * PIXELS


def test_image_pad_is_expanded_to_one_token_per_merged_patch():
    expanded = expand_image_pads("a<|image_pad|>b", 256)
    assert expanded.count(IMAGE_PAD) == 256 and expanded.startswith("a<") and expanded.endswith(">b")


def test_value_is_mu_and_components_are_mu_and_sigma(scorer):
    outputs = scorer.score([ScorerInput(image=random_image(0), prompt="a cat")])
    assert set(outputs[0].components) == {"mu", "sigma"}
    assert outputs[0].value == outputs[0].components["mu"]
    assert outputs[0].components["sigma"] != outputs[0].components["mu"]


def test_scores_do_not_depend_on_batch_companions(scorer):
    first = ScorerInput(image=random_image(1, 96, 64), prompt="a cat")
    second = ScorerInput(image=random_image(2, 64, 128), prompt="a much longer prompt about a dog on a beach")
    alone = scorer.score([first])[0].components
    together = scorer.score([first, second])[0].components
    assert together["mu"] == pytest.approx(alone["mu"], abs=1e-4)
    assert together["sigma"] == pytest.approx(alone["sigma"], abs=1e-4)


def test_different_prompts_get_different_scores(scorer):
    image = random_image(3)
    cat, dog = scorer.score([ScorerInput(image=image, prompt="a cat"), ScorerInput(image=image, prompt="a dog")])
    assert cat.value != dog.value


def test_missing_checkpoint_names_the_fetch_command(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="hf download MizzenAI/HPSv3 HPSv3.safetensors"):
        resolve_checkpoint(str(tmp_path / "absent.safetensors"))


def test_missing_base_model_names_the_fetch_command(tiny, tmp_path):
    scorer = HPSv3Scorer(HPSv3Config(model=str(tmp_path / "no-such-dir"), checkpoint=str(tiny[1])))
    with pytest.raises(WeightsNotFoundError, match="hf download Qwen/Qwen2-VL-7B-Instruct"):
        scorer.setup()


def test_checkpoint_resolves_from_the_hugging_face_cache_by_repo_id(tiny, tmp_path, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--MizzenAI--HPSv3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    shutil.copy(tiny[1], repo / "snapshots" / revision / CHECKPOINT_FILE)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_checkpoint("MizzenAI/HPSv3") == repo / "snapshots" / revision / CHECKPOINT_FILE


@pytest.mark.slow
def test_service_serves_mu_and_sigma_over_http(tiny):
    base, checkpoint = tiny
    image = random_image(4)
    item = {"image": {"raw": {"height": 64, "width": 64, "channels": 3,
                              "pixels": base64.b64encode(image.tobytes()).decode()}}, "prompt": "a cat"}
    with running_service("services.hpsv3", "--model", str(base), "--checkpoint", str(checkpoint)) as service:
        reply = httpx.post(service.url + "/v1/score", json={"items": [item]}, timeout=60).json()
        info = httpx.get(service.url + "/v1/info", timeout=10).json()
    score = reply["scores"][0]
    assert score["value"] == score["components"]["mu"]
    assert set(score["components"]) == {"mu", "sigma"}
    assert info["name"] == "hpsv3" and sorted(info["components"]) == ["mu", "sigma"]


@pytest.mark.slow
def test_service_with_missing_checkpoint_exits_with_a_clear_error(tiny, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "services.hpsv3", "--model", str(tiny[0]), "--checkpoint", str(tmp_path / "x"),
         "--port", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "hf download MizzenAI/HPSv3" in result.stderr
