"""Pretraining of the shapes base model: reproducible, stoppable, and its checkpoint loads as a FlowModel."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from trainer.shapes_world.pretrain import PretrainConfig, SceneBatches, config_from_args, pretrain
from trainer.shapes_world.text_encoder import ShapesTextEncoder

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
TINY = dict(device="cpu", batch_size=4, warmup_steps=1, layers=1, heads=2, head_dim=8, text_width=16, text_layers=1,
            text_heads=2, pooled_dim=16, log_every=1, eval_every=-1, save_every=1000)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors")),
            **{"text." + k: v for k, v in load_file(str(out / "text_encoder" / "model.safetensors")).items()}}


def test_the_same_seed_gives_identical_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pretrain(PretrainConfig(out_dir=str(a), steps=3, **TINY))
    pretrain(PretrainConfig(out_dir=str(b), steps=3, **TINY))
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_records_step_loss_and_config(tmp_path):
    out = tmp_path / "model"
    meta = pretrain(PretrainConfig(out_dir=str(out), steps=2, **TINY))
    info = json.loads((out / "shapes_model.json").read_text())
    assert info["step"] == meta["step"] == 2 and info["image_size"] == 32
    assert info["pretrain_config"]["layers"] == 1 and info["loss"] > 0
    assert all(v.dtype == torch.float16 for v in weights(out).values())
    assert (tmp_path / "model_log.jsonl").read_text().count("\n") == 2


def test_a_time_limit_stops_the_run_and_still_saves(tmp_path):
    out = tmp_path / "model"
    meta = pretrain(PretrainConfig(out_dir=str(out), steps=1000, time_limit_s=1e-9, **TINY))
    assert meta["step"] == 1
    assert json.loads((out / "shapes_model.json").read_text())["step"] == 1


def test_the_data_stream_does_not_depend_on_the_number_of_workers():
    config = PretrainConfig(seed=5, **TINY)
    data = SceneBatches(config, ShapesTextEncoder())
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    batches = iter(loader)
    for index in range(3):
        ids, images = next(batches)
        want_ids, want_images = data.batch(index)
        assert torch.equal(ids, want_ids) and torch.equal(images, want_images)


def test_cli_flags_map_to_the_typed_config():
    config = config_from_args(["--steps", "7", "--lr", "0.002", "--mix-counting", "0.5", "--amp-bf16", "false"])
    assert config.steps == 7 and config.lr == 0.002 and config.mix.counting == 0.5 and config.amp_bf16 is False


def test_the_command_line_writes_a_checkpoint_the_adapter_loads(tmp_path):
    from trainer.models.shapes import ShapesConfig, ShapesFlowModel

    out = tmp_path / "model"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    subprocess.run([sys.executable, "-m", "trainer.shapes_world.pretrain", f"--out-dir={out}", "--steps=1", *flags],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    model = ShapesFlowModel(out, ShapesConfig(device="cpu", lora_rank=2, lora_alpha=2))
    assert model.latent_shape() == (3, 32, 32)


def test_stop_at_step_saves_that_step_under_the_schedule_of_the_full_run(tmp_path):
    out = tmp_path / "stopped"
    config = PretrainConfig(out_dir=str(out), steps=50, stop_at_step=2, **TINY)
    assert pretrain(config)["step"] == 2
    info = json.loads((out / "shapes_model.json").read_text())
    assert info["step"] == 2 and info["pretrain_config"]["steps"] == 50


def test_a_continuation_starts_from_the_given_checkpoint(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain(PretrainConfig(out_dir=str(first), steps=2, **TINY))
    pretrain(PretrainConfig(out_dir=str(second), steps=1, init_from=str(first), lr=0.0, **TINY))
    wa, wb = weights(first), weights(second)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_continuation_into_a_deeper_transformer_starts_from_the_same_function(tmp_path):
    from trainer.shapes_world.pretrain import build_models, load_weights

    shallow = tmp_path / "shallow"
    pretrain(PretrainConfig(out_dir=str(shallow), steps=2, **{**TINY, "layers": 2}))
    small, text = build_models(PretrainConfig(**{**TINY, "layers": 2}))
    deep, deep_text = build_models(PretrainConfig(**{**TINY, "layers": 5}))
    load_weights(small, text, shallow)
    load_weights(deep, deep_text, shallow)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    emb, pooled = text.encode(["a photo of a red circle", "a photo of two squares"])
    with torch.no_grad():
        outputs = [model(hidden_states=x, timestep=torch.tensor([700.0, 200.0]), encoder_hidden_states=emb,
                         pooled_projections=pooled, return_dict=False)[0] for model in (small, deep)]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert len(deep.transformer_blocks) == 5 and deep.transformer_blocks[-1].context_pre_only
