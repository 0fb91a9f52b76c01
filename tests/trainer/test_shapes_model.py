"""ShapesFlowModel: the shapes base model (pixel-space SD3 transformer + shapes text encoder) as a FlowModel.

A tiny checkpoint is written by the real pretraining code (one step) and loaded through the registry, the same path
the shipped checkpoint takes; one test loads the shipped checkpoint itself."""
from __future__ import annotations

import pytest
import torch

from trainer.models.registry import load_model
from trainer.models.shapes import DEFAULT_SHAPES_MODEL, ShapesConfig, ShapesFlowModel, ShapesModelNotFoundError
from trainer.shapes_world.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)
PROMPTS = ["a photo of a red circle", "a photo of two squares"]


def tiny_pretrain_config(out_dir, **overrides) -> PretrainConfig:
    values = dict(out_dir=str(out_dir), device="cpu", steps=1, batch_size=4, warmup_steps=1, layers=1, heads=2,
                  head_dim=8, text_width=16, text_layers=1, text_heads=2, pooled_dim=16, log_every=1,
                  eval_every=-1, save_every=1000)
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "base_model"
    pretrain(tiny_pretrain_config(out))
    return out


@pytest.fixture(scope="module")
def model(checkpoint) -> ShapesFlowModel:
    return load_model("shapes", str(checkpoint), ShapesConfig(device="cpu", lora_rank=4, lora_alpha=8))


def test_registry_loads_the_shapes_adapter(model):
    assert isinstance(model, ShapesFlowModel)
    assert model.latent_shape() == (3, 32, 32)


def test_weights_stored_in_fp16_are_loaded_as_fp32(model):
    assert all(p.dtype == torch.float32 for p in model.transformer.parameters())
    assert all(p.dtype == torch.float32 for p in model.text_encoder.parameters())


def test_velocity_has_the_state_shape_with_and_without_guidance(model):
    cond = model.encode_prompts(PROMPTS, with_negative=True)
    x = torch.randn(2, *model.latent_shape())
    for guidance in (1.0, 3.0):
        v = model.velocity(x, torch.tensor([0.9, 0.3]), cond, guidance_scale=guidance)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()


def test_negative_rows_are_the_empty_prompt(model):
    cond = model.encode_prompts(PROMPTS, with_negative=True)
    empty = model.encode_prompts(["", ""], with_negative=False)
    torch.testing.assert_close(cond.negative_prompt_embeds, empty.prompt_embeds)
    torch.testing.assert_close(cond.negative_pooled, empty.pooled)


def test_gradients_reach_only_the_lora_parameters(model):
    trainable = model.trainable_parameters()
    assert trainable and all(".lora_" in name for name in model.lora_state_dict())
    cond = model.encode_prompts(PROMPTS, with_negative=False)
    x = torch.randn(2, *model.latent_shape())
    model.velocity(x, 0.5, cond, guidance_scale=1.0).square().mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    for p in trainable:
        p.grad = None


def test_reference_is_the_model_without_its_adapter(model):
    cond = model.encode_prompts(PROMPTS, with_negative=False)
    x = torch.randn(2, *model.latent_shape())
    state = model.lora_state_dict()
    with torch.no_grad():
        before = model.velocity(x, 0.5, cond, 1.0)
        model.load_lora_state_dict({k: v + 0.05 for k, v in state.items()})
        changed = model.velocity(x, 0.5, cond, 1.0)
        with model.reference():
            reference = model.velocity(x, 0.5, cond, 1.0)
    model.load_lora_state_dict(state)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(reference, before)  # B=0 at init: the adapter starts as the identity


def test_decode_maps_pixels_in_minus_one_one_to_uint8(model):
    x = torch.stack([torch.full((3, 32, 32), -1.0), torch.full((3, 32, 32), 1.0)])
    x[1, 0, 0, 0] = 0.0
    images = model.decode(x)
    assert images.dtype == torch.uint8 and images.shape == (2, 32, 32, 3)
    assert images[0].max() == 0 and images[1, 1:, 1:].min() == 255 and images[1, 0, 0, 0] == 128


def test_missing_checkpoint_names_where_it_looked_and_how_to_make_one(tmp_path):
    with pytest.raises(ShapesModelNotFoundError, match="trainer.shapes_world.pretrain"):
        ShapesFlowModel(tmp_path / "nothing", ShapesConfig(device="cpu"))


def test_a_resolution_other_than_the_native_one_is_refused(checkpoint):
    with pytest.raises(ValueError, match="native 32"):
        ShapesFlowModel(checkpoint, ShapesConfig(device="cpu", resolution=64))


def test_the_shipped_checkpoint_loads_by_default():
    model = load_model("shapes", None, ShapesConfig(device="cpu", lora_rank=4, lora_alpha=8))
    assert model.path == DEFAULT_SHAPES_MODEL
    cond = model.encode_prompts(PROMPTS, with_negative=True)
    v = model.velocity(torch.randn(2, *model.latent_shape()), 1.0, cond, guidance_scale=2.0)
    assert v.shape == (2, 3, 32, 32) and torch.isfinite(v).all()


def test_a_saved_lora_loads_back_with_its_rank_and_gives_the_same_velocity(checkpoint, tmp_path):
    from trainer.models.transformer_flow import saved_lora_shape
    from trainer.shapes_world.evaluate import load_model as load_with_lora

    trained = ShapesFlowModel(checkpoint, ShapesConfig(device="cpu", lora_rank=2, lora_alpha=3.0))
    with torch.no_grad():
        for param in trained.trainable_parameters():
            param.normal_(0, 0.1)
    trained.save_lora(str(tmp_path / "lora"))
    assert saved_lora_shape(tmp_path / "lora") == (2, 3.0)
    loaded = load_with_lora(str(checkpoint), str(tmp_path / "lora"))
    x = torch.randn(2, *trained.latent_shape(), generator=torch.Generator().manual_seed(0))
    cond = trained.encode_prompts(PROMPTS, with_negative=True)
    with torch.no_grad():
        expected = trained.velocity(x, 0.5, cond, 3.0)
        assert torch.allclose(loaded.velocity(x, 0.5, cond, 3.0), expected, atol=1e-6)
        with loaded.reference():
            assert not torch.allclose(loaded.velocity(x, 0.5, cond, 3.0), expected, atol=1e-4)


def test_loading_a_lora_of_another_rank_is_refused(checkpoint, tmp_path):
    ShapesFlowModel(checkpoint, ShapesConfig(device="cpu", lora_rank=2)).save_lora(str(tmp_path / "lora"))
    model = ShapesFlowModel(checkpoint, ShapesConfig(device="cpu", lora_rank=4))
    with pytest.raises((KeyError, RuntimeError)):
        model.load_lora(str(tmp_path / "lora"))
