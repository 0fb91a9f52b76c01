"""SD3FlowModel: loading through from_pretrained, prompt encoding, decoding, errors, registry; the tiny builder."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from trainer.models.registry import MODEL_LOADERS, load_model
from trainer.models.sd3 import DEFAULT_SD3_MODEL, ModelNotFoundError, SD3Config, SD3FlowModel
from trainer.models.tiny_sd3 import TINY_SD3_RESOLUTION, build_tiny_sd3

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return SD3FlowModel(str(tiny_dir), SD3Config(resolution=TINY_SD3_RESOLUTION, max_sequence_length=16))


def test_tiny_sd3_loads_through_sd3_flow_model(model):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    pipeline = model.pipeline
    assert isinstance(model.transformer, SD3Transformer2DModel) and model.transformer is pipeline.transformer
    assert isinstance(pipeline.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipeline.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipeline.text_encoder_3, T5EncoderModel) and isinstance(pipeline.vae, AutoencoderKL)
    assert model.scheduler.config.shift == 3.0
    assert model.latent_shape() == (16, TINY_SD3_RESOLUTION // 2, TINY_SD3_RESOLUTION // 2)


def test_tiny_sd3_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    first, second = build_tiny_sd3(tmp_path / "a"), build_tiny_sd3(tmp_path / "b")
    for part in ("transformer/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder_3/model"):
        a, b = load_file(first / f"{part}.safetensors"), load_file(second / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_encode_prompts_gives_one_row_per_prompt_in_sd3_layout(model):
    cond = model.encode_prompts(["a red circle", "two blue squares", "a cat"], with_negative=False)
    clip_tokens = model.pipeline.tokenizer_max_length
    assert cond.prompt_embeds.shape == (3, clip_tokens + 16, model.transformer.config.joint_attention_dim)
    assert cond.pooled.shape == (3, model.transformer.config.pooled_projection_dim)
    assert cond.negative_prompt_embeds is None and cond.negative_pooled is None


def test_negative_rows_are_the_empty_prompt(model):
    cond = model.encode_prompts(["a red circle", "two blue squares"], with_negative=True)
    empty = model.encode_prompts(["", ""], with_negative=False)
    torch.testing.assert_close(cond.negative_prompt_embeds, empty.prompt_embeds)
    torch.testing.assert_close(cond.negative_pooled, empty.pooled)
    assert not torch.equal(cond.prompt_embeds, cond.negative_prompt_embeds)


def test_decode_gives_uint8_images(model):
    x = torch.randn(3, *model.latent_shape(), generator=torch.Generator().manual_seed(0))
    images = model.decode(x)
    assert images.dtype == torch.uint8 and images.shape == (3, TINY_SD3_RESOLUTION, TINY_SD3_RESOLUTION, 3)
    assert images.device.type == "cpu"


def test_decode_matches_the_diffusers_pipeline_output(model):
    pipeline = model.pipeline
    arguments = dict(prompt="a red circle", num_inference_steps=2, height=TINY_SD3_RESOLUTION,
                     width=TINY_SD3_RESOLUTION, max_sequence_length=16)
    with model.reference():
        latents = pipeline(**arguments, output_type="latent", generator=torch.Generator().manual_seed(3)).images
        expected = pipeline(**arguments, output_type="np", generator=torch.Generator().manual_seed(3)).images
    expected_uint8 = torch.from_numpy((expected * 255).round().astype("uint8"))
    assert torch.equal(model.decode(latents), expected_uint8)


def test_missing_local_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_model_here"
    with pytest.raises(ModelNotFoundError) as caught:
        SD3FlowModel(str(missing), SD3Config(resolution=TINY_SD3_RESOLUTION))
    message = str(caught.value)
    assert str(missing) in message and "huggingface-cli download" in message


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path):
    script = ("from trainer.models.sd3 import SD3FlowModel, ModelNotFoundError\n"
              "try:\n    SD3FlowModel()\nexcept ModelNotFoundError as error:\n    print(error)\n")
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.getcwd())
    environment.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"huggingface-cli download {DEFAULT_SD3_MODEL}" in result.stdout
    assert str(tmp_path / "hf") in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout


def test_resolution_must_fit_the_vae_and_patch_grid(tiny_dir):
    with pytest.raises(ValueError, match="multiple of 4"):
        SD3FlowModel(str(tiny_dir), SD3Config(resolution=66))


def test_registry_loads_sd3(tiny_dir):
    loaded = load_model("sd3", str(tiny_dir), SD3Config(resolution=TINY_SD3_RESOLUTION))
    assert isinstance(loaded, SD3FlowModel) and "sd3" in MODEL_LOADERS


def test_registry_rejects_unknown_kind(tiny_dir):
    with pytest.raises(ValueError, match="registered: .*sd3"):
        load_model("not-a-model", str(tiny_dir), SD3Config())
