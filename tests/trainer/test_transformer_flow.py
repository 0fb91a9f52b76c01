"""TransformerFlowModel behaviour (velocity, CFG, LoRA, reference policy, LoRA state and export), on the tiny SD3."""
from __future__ import annotations

import pytest
import torch

from trainer.models.sd3 import SD3Config, SD3FlowModel
from trainer.models.tiny_sd3 import TINY_SD3_RESOLUTION, build_tiny_sd3
from trainer.models.transformer_flow import FLOW_GRPO_LORA_TARGETS

torch.set_num_threads(1)
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))


def make_model(tiny_dir, **overrides) -> SD3FlowModel:
    settings = dict(resolution=TINY_SD3_RESOLUTION, max_sequence_length=16, lora_rank=4, lora_alpha=8.0)
    settings.update(overrides)
    return SD3FlowModel(str(tiny_dir), SD3Config(**settings))


def inputs(model: SD3FlowModel, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(PROMPTS), *model.latent_shape(), generator=generator)
    sigma = torch.tensor([0.3, 0.8])
    return x, sigma, model.encode_prompts(PROMPTS, with_negative=True)


def train_one_step(model: SD3FlowModel, x, sigma, cond) -> None:
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.velocity(x, sigma, cond, guidance_scale=1.0).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_velocity_is_fp32_with_the_state_shape(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    v = model.velocity(x, sigma, cond, guidance_scale=4.5)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()


def test_velocity_feeds_the_transformer_timestep_1000_sigma(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    with torch.no_grad(), model.reference():
        direct = model.transformer(hidden_states=x, timestep=1000 * sigma, encoder_hidden_states=cond.prompt_embeds,
                                   pooled_projections=cond.pooled, return_dict=False)[0]
        v = model.velocity(x, sigma, cond, guidance_scale=1.0)
    torch.testing.assert_close(v, direct, rtol=0, atol=0)


def test_scalar_sigma_equals_a_repeated_sigma(tiny_dir):
    model = make_model(tiny_dir)
    x, _, cond = inputs(model)
    with torch.no_grad():
        scalar = model.velocity(x, 0.6, cond, guidance_scale=1.0)
        per_row = model.velocity(x, torch.tensor([0.6, 0.6]), cond, guidance_scale=1.0)
    torch.testing.assert_close(scalar, per_row)


def test_cfg_equals_uncond_plus_scale_times_difference(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    unconditional = type(cond)(prompt_embeds=cond.negative_prompt_embeds, pooled=cond.negative_pooled)
    with torch.no_grad():
        guided = model.velocity(x, sigma, cond, guidance_scale=4.5)
        v_cond = model.velocity(x, sigma, cond, guidance_scale=1.0)
        v_uncond = model.velocity(x, sigma, unconditional, guidance_scale=1.0)
    torch.testing.assert_close(guided, v_uncond + 4.5 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)


def test_cfg_without_negative_rows_is_an_error(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, _ = inputs(model)
    with pytest.raises(ValueError, match="with_negative=True"):
        model.velocity(x, sigma, model.encode_prompts(PROMPTS, with_negative=False), guidance_scale=4.5)


def test_lora_covers_flow_grpo_targets_with_configured_rank_and_alpha(tiny_dir):
    model = make_model(tiny_dir, lora_rank=4, lora_alpha=12.0)
    wrapped = {name.rsplit(".", 2)[0] for name in model.lora_state_dict()}
    assert {target for target in FLOW_GRPO_LORA_TARGETS if any(name.endswith("." + target) for name in wrapped)} \
        == set(FLOW_GRPO_LORA_TARGETS)
    layer = model.transformer.transformer_blocks[0].attn.to_q
    assert layer.r["default"] == 4 and layer.scaling["default"] == pytest.approx(3.0)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.trainable_parameters())


def test_lora_is_identity_at_init(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        adapted = model.velocity(x, sigma, cond, guidance_scale=4.5)
        with model.reference():
            base = model.velocity(x, sigma, cond, guidance_scale=4.5)
    torch.testing.assert_close(adapted, base, rtol=0, atol=0)


def test_optimizer_step_changes_velocity_but_not_reference(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    with torch.no_grad(), model.reference():
        base_before = model.velocity(x, sigma, cond, guidance_scale=4.5)
    train_one_step(model, x, sigma, cond)
    with torch.no_grad():
        adapted = model.velocity(x, sigma, cond, guidance_scale=4.5)
        with model.reference():
            base_after = model.velocity(x, sigma, cond, guidance_scale=4.5)
    assert (adapted - base_before).abs().max() > 1e-4
    torch.testing.assert_close(base_after, base_before, rtol=0, atol=0)
    assert all(p.requires_grad for p in model.trainable_parameters())  # re-enabled after the reference context


def test_lora_init_is_seeded_not_taken_from_the_global_rng(tiny_dir):
    torch.manual_seed(1)
    first = make_model(tiny_dir).lora_state_dict()
    torch.manual_seed(2)
    second = make_model(tiny_dir).lora_state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_lora_state_dict_keys_are_peft_keys(tiny_dir):
    from peft.utils import get_peft_model_state_dict

    model = make_model(tiny_dir)
    assert set(model.lora_state_dict()) == set(get_peft_model_state_dict(model.transformer))


def test_lora_state_dict_round_trip_is_exact(tiny_dir):
    trained = make_model(tiny_dir)
    x, sigma, cond = inputs(trained)
    train_one_step(trained, x, sigma, cond)
    state = trained.lora_state_dict()
    fresh = make_model(tiny_dir, lora_init_seed=7)
    parameters_before = [id(p) for p in fresh.trainable_parameters()]
    fresh.load_lora_state_dict(state)
    assert [id(p) for p in fresh.trainable_parameters()] == parameters_before
    assert all(torch.equal(fresh.lora_state_dict()[key], value) for key, value in state.items())
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, sigma, cond, 4.5), trained.velocity(x, sigma, cond, 4.5),
                                   rtol=0, atol=0)


def test_lora_state_dict_is_a_copy(tiny_dir):
    model = make_model(tiny_dir)
    state = model.lora_state_dict()
    key = next(iter(state))
    state[key].add_(1.0)
    assert not torch.equal(model.lora_state_dict()[key], state[key])


def test_load_lora_state_dict_rejects_foreign_keys(tiny_dir):
    model = make_model(tiny_dir)
    state = model.lora_state_dict()
    state["not.a.lora_A.weight"] = state.pop(next(iter(state)))
    with pytest.raises(KeyError, match="missing"):
        model.load_lora_state_dict(state)


def test_saved_lora_loads_into_diffusers_pipeline_with_the_same_effect(tiny_dir, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    model = make_model(tiny_dir, lora_rank=4, lora_alpha=16.0)  # alpha != r: the scale must survive the export
    x, sigma, cond = inputs(model)
    train_one_step(model, x, sigma, cond)
    model.save_lora(str(tmp_path / "lora"))

    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_dir)
    arguments = dict(hidden_states=x, timestep=1000 * sigma, encoder_hidden_states=cond.prompt_embeds,
                     pooled_projections=cond.pooled, return_dict=False)
    with torch.no_grad():
        pipeline_base = pipeline.transformer(**arguments)[0]
        pipeline.load_lora_weights(str(tmp_path / "lora"))
        pipeline_adapted = pipeline.transformer(**arguments)[0]
        ours = model.velocity(x, sigma, cond, guidance_scale=1.0)
        with model.reference():
            ours_base = model.velocity(x, sigma, cond, guidance_scale=1.0)
    torch.testing.assert_close(pipeline_base, ours_base)
    torch.testing.assert_close(pipeline_adapted, ours, rtol=1e-5, atol=1e-6)
    assert (pipeline_adapted - pipeline_base).abs().max() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    x = sigma = cond = None
    gradients = []
    for checkpointing in (False, True):
        model = make_model(tiny_dir, gradient_checkpointing=checkpointing)
        if x is None:
            x, sigma, cond = inputs(model)
        model.velocity(x, sigma, cond, guidance_scale=4.5).pow(2).mean().backward()
        gradients.append([p.grad.clone() for p in model.trainable_parameters()])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in gradients[0])


def test_bf16_keeps_lora_in_fp32_and_returns_fp32(tiny_dir):
    model = make_model(tiny_dir, dtype="bf16", device="cpu")
    x, sigma, cond = inputs(model)
    v = model.velocity(x, sigma, cond, guidance_scale=4.5)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert model.transformer.pos_embed.proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    v.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.trainable_parameters())


def test_nested_reference_contexts_restore_the_adapter_only_at_the_outermost_exit(tiny_dir):
    model = make_model(tiny_dir)
    x, sigma, cond = inputs(model)
    train_one_step(model, x, sigma, cond)
    with torch.no_grad():
        adapted = model.velocity(x, sigma, cond, 1.0)
        with model.reference():
            base = model.velocity(x, sigma, cond, 1.0)
            with model.reference():
                pass
            torch.testing.assert_close(model.velocity(x, sigma, cond, 1.0), base, rtol=0, atol=0)
        torch.testing.assert_close(model.velocity(x, sigma, cond, 1.0), adapted, rtol=0, atol=0)


def test_reference_and_save_work_when_the_transformer_is_wrapped_in_ddp(tiny_dir, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = make_model(tiny_dir)
        x, sigma, cond = inputs(model)
        model.transformer = DistributedDataParallel(model.transformer)
        train_one_step(model, x, sigma, cond)
        with torch.no_grad():
            adapted = model.velocity(x, sigma, cond, 1.0)
            with model.reference():
                base = model.velocity(x, sigma, cond, 1.0)
        assert (adapted - base).abs().max() > 1e-4
        model.save_lora(str(tmp_path / "lora"))
        assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    finally:
        dist.destroy_process_group()
