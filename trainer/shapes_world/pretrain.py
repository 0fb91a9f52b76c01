"""Pretrain the shapes world's base model: a pixel-space SD3 transformer + a tiny text encoder, rectified flow.

Model: diffusers `SD3Transformer2DModel` directly on 32x32 RGB pixels in [-1, 1] (in/out channels 3, patch 4 =
64 image tokens, RMS qk-norm as in SD3.5), conditioned on `ShapesTextEncoder` (trainer.shapes_world.text_encoder),
both trained jointly from scratch.

Objective (rectified flow, SD3's logit-normal timestep density): x0 = image, eps ~ N(0, I),
sigma = sigmoid(m + s * n) with n ~ N(0, 1), x_sigma = (1 - sigma) x0 + sigma eps, and the transformer (at timestep
1000 * sigma, the diffusers SD3 convention) regresses the velocity eps - x0 with an MSE loss. Prompts are replaced
by the empty prompt with probability `prompt_dropout`, so classifier-free guidance works. Every batch is a fresh
render: prompts drawn by `TagMix` (favouring single-object and colour prompts) from all the world's GenEval
prompts, each rendered by `scene_for` (a scene satisfying its metadata). Batch b is drawn from the RNG seeded with
(seed, b), so the data stream does not depend on the number of loader workers. AdamW with linear warm-up and cosine
decay; an EMA of all weights is what gets saved.

Saved (every `save_every` steps, at the end, and when `time_limit_s` runs out), atomically, as `out_dir`:
`transformer/` (diffusers `save_pretrained`, loadable by `SD3Transformer2DModel.from_pretrained`), `text_encoder/`
(config.json + model.safetensors) and `shapes_model.json` (image size, the pretraining config, step, loss, and
held-out GenEval scores when `eval_every` > 0). Weights are stored in fp16 (`save_dtype`) and loaded as fp32.

The shipped checkpoint trainer/shapes_world/base_model/ was made on the project's shared 2-core CPU machine (one
thread per run, 0.5-2.3 steps/s with other work beside it) in six stages, each continuing from the previous
stage's EMA weights; base_model_stage{1,...,6}_log.jsonl beside it hold the six loss curves:
1. 4 layers from scratch, 4000 steps (38 min);
2. 4 layers, a mix richer in single-object and colour prompts, 2000 steps (15 min). Held-out strict overall 0.05:
   colours and rough shapes, ragged outlines the detector refuses, triangles too small;
3. grown to 8 layers (`grown_state`: the 4 new middle blocks start as identity, so the function is unchanged at
   the start), stopped by its time limit at step 3742 (50 min). Held-out strict overall 0.20 (single object 0.38,
   colours 0.63): the extra depth, not more steps at 4 layers (1000-2000 further 4-layer steps changed nothing),
   is what made outlines clean enough to detect;
4. 8 layers, a lower learning rate and a fresh data stream (seed 2), stopped by its time limit at step 1527
   (25 min). Held-out strict overall 0.31 (single 0.63, two 0.44, counting 0, colours 0.75, position 0.05,
   colour attribution 0.02; 8 samples per prompt, 20 Euler steps, guidance 3);
5. 8 layers, lr 2e-4, more two-object prompts, a fresh data stream (seed 3), stopped by its time limit at step 1836
   (45 min). Held-out strict overall 0.38 (single 0.63, two 0.50, counting 0.13, colours 0.81, position 0.14,
   colour attribution 0.09; 8 samples, 20 steps, guidance 3); 0.35 with the demo's sampler (10 steps);
6. 8 layers, lr 1.5e-4, the training timesteps moved toward low noise (logit-normal mean -0.6: sigma's median
   0.35 instead of 0.5, where outlines are drawn), more two-object and counting prompts, a fresh data stream
   (seed 4), stopped by its time limit at step 1766 (45 min). Held-out strict overall with the demo's sampler
   (10 steps) 0.35 -> 0.48 (two objects 0.50 -> 0.75, counting 0 -> 0.21, colours 0.81 -> 1.0, position 0.09 ->
   0.19, colour attribution 0.08 -> 0.14): cleaner outlines, which the counting threshold 0.9 needs. The shipped
   model.

    python -m trainer.shapes_world.pretrain --out-dir /tmp/shapes/stage1 --device cpu --threads 1 --batch-size 64 \
        --layers 4 --steps 4000 --warmup-steps 200 --ema-decay 0.998 --log-every 50 --save-every 500 \
        --eval-every 1000
    python -m trainer.shapes_world.pretrain --init-from /tmp/shapes/stage1 --out-dir /tmp/shapes/stage2 \
        --device cpu --threads 1 --batch-size 64 --layers 4 --steps 2000 --lr 5e-4 --warmup-steps 100 \
        --ema-decay 0.998 --log-every 50 --save-every 500 --eval-every 0 --eval-samples 8 \
        --mix-single-object 0.35 --mix-colors 0.3 --mix-two-object 0.1 --mix-counting 0.05 --mix-position 0.05 \
        --mix-color-attr 0.15
    python -m trainer.shapes_world.pretrain --init-from /tmp/shapes/stage2 --out-dir /tmp/shapes/stage3 \
        --device cpu --threads 1 --batch-size 64 --layers 8 --steps 4000 --stop-at-step 3742 --lr 5e-4 \
        --warmup-steps 200 --ema-decay 0.998 --log-every 50 --save-every 500 --eval-every 0 --eval-samples 8 \
        --mix-single-object 0.3 --mix-colors 0.25 --mix-two-object 0.1 --mix-counting 0.05 --mix-position 0.1 \
        --mix-color-attr 0.2
    python -m trainer.shapes_world.pretrain --init-from /tmp/shapes/stage3 --out-dir /tmp/shapes/stage4 \
        --device cpu --threads 1 --batch-size 64 --layers 8 --steps 1900 --stop-at-step 1527 --lr 2.5e-4 \
        --warmup-steps 50 --ema-decay 0.998 --seed 2 --log-every 50 --save-every 500 --eval-every 0 \
        --eval-samples 8 --mix-single-object 0.3 --mix-colors 0.25 --mix-two-object 0.1 --mix-counting 0.05 \
        --mix-position 0.1 --mix-color-attr 0.2
    python -m trainer.shapes_world.pretrain --init-from /tmp/shapes/stage4 --out-dir /tmp/shapes/stage5 \
        --device cpu --threads 1 --batch-size 64 --layers 8 --steps 3000 --stop-at-step 1836 --lr 2e-4 \
        --warmup-steps 50 --ema-decay 0.998 --seed 3 --log-every 50 --save-every 500 --eval-every 0 \
        --eval-samples 8 --mix-single-object 0.3 --mix-colors 0.2 --mix-two-object 0.15 --mix-counting 0.05 \
        --mix-position 0.1 --mix-color-attr 0.2
    python -m trainer.shapes_world.pretrain --init-from /tmp/shapes/stage5 --out-dir trainer/shapes_world/base_model \
        --device cpu --threads 1 --batch-size 64 --layers 8 --steps 3000 --stop-at-step 1766 --lr 1.5e-4 \
        --warmup-steps 50 --ema-decay 0.998 --seed 4 --log-every 50 --save-every 500 --eval-every -1 \
        --logit-normal-mean -0.6 --mix-single-object 0.3 --mix-colors 0.15 --mix-two-object 0.2 \
        --mix-counting 0.1 --mix-position 0.1 --mix-color-attr 0.15

A stage stopped by wall-clock time is reproduced exactly (the weights at a given step are bit-identical on the CPU)
with `--stop-at-step <the step it reached>`, as written above. On a GPU (`--device cuda --batch-size 256
--num-workers 12`) the same code runs far faster.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from trainer.dataclass_cli import add_dataclass_arguments, dataclass_from_namespace
from trainer.shapes_world.pixels import from_pixels, to_pixels
from trainer.shapes_world.prompts import HELDOUT_FILE, PromptSampler, TagMix, all_metadata, read_jsonl, scene_for
from trainer.shapes_world.render import RenderConfig
from trainer.shapes_world.text_encoder import ShapesTextEncoder, TextEncoderConfig

MODEL_CONFIG_NAME = "shapes_model.json"


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (the CLI exposes each field as --field-name)."""

    out_dir: str = "trainer/shapes_world/base_model"  # checkpoint directory written (atomically replaced)
    seed: int = 0  # seeds the weights init, the noise/timesteps and the data stream
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int = 1  # torch CPU threads (1: on a shared, busy CPU more threads were up to 10x slower per step)
    steps: int = 20000  # optimizer steps (the run also stops at time_limit_s)
    time_limit_s: float = 0.0  # wall-clock budget in seconds; 0 = none. A stop saves the checkpoint
    init_from: str = ""  # checkpoint directory whose (EMA) weights start this run (a continuation; a shallower one is grown to `layers`); "" = random init
    stop_at_step: int = 0  # stop (and save) after this step without changing the lr schedule; 0 = run to `steps`
    batch_size: int = 256  # images per step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 500  # linear learning-rate warm-up, steps
    min_lr_fraction: float = 0.1  # cosine decay ends at this fraction of lr (at `steps`)
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA weight of the old average per step
    prompt_dropout: float = 0.1  # probability of training a sample on the empty prompt (for CFG)
    logit_normal_mean: float = 0.0  # m in sigma = sigmoid(m + s n)
    logit_normal_std: float = 1.0  # s in sigma = sigmoid(m + s n)
    image_size: int = 32  # rendered image side, pixels
    min_size_fraction: float = 0.28  # smallest shape, fraction of image_size
    max_size_fraction: float = 0.40  # largest shape, fraction of image_size
    patch_size: int = 4  # transformer patch side, pixels (4 at 32 px = 64 tokens)
    layers: int = 6  # SD3 joint transformer blocks
    heads: int = 4  # attention heads
    head_dim: int = 32  # channels per head (inner dim = heads * head_dim)
    text_width: int = 128  # text encoder width = joint_attention_dim
    text_layers: int = 2  # text encoder blocks
    text_heads: int = 4  # text encoder heads
    pooled_dim: int = 128  # pooled text vector size
    mix: TagMix = field(default_factory=TagMix)  # tag sampling weights (CLI: --mix-single-object 0.25 ...)
    num_workers: int = 0  # data loader processes rendering batches (0 = render in the training process)
    amp_bf16: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    log_every: int = 100  # steps between log lines (also appended to out_dir/../<name>_log.jsonl)
    save_every: int = 2000  # steps between checkpoints
    eval_every: int = 0  # steps between held-out GenEval evaluations (0 = only at the end, -1 = never)
    eval_samples: int = 4  # samples per held-out prompt in those evaluations
    eval_steps: int = 20  # Euler steps of those evaluations
    eval_guidance: float = 3.0  # CFG scale of those evaluations
    save_dtype: str = "fp16"  # fp16 | fp32: dtype of the saved weights


class SceneBatches(torch.utils.data.IterableDataset):
    """Infinite stream of (token ids [B, L], images uint8 [B, H, W, 3]); batch b comes from RNG (seed, b)."""

    def __init__(self, config: PretrainConfig, tokenizer: ShapesTextEncoder) -> None:
        self.config = config
        self.sampler = PromptSampler(all_metadata(), config.mix)
        self.render = RenderConfig(image_size=config.image_size, min_size_fraction=config.min_size_fraction,
                                   max_size_fraction=config.max_size_fraction)
        self.tokenize = tokenizer.tokenize

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, index])
        prompts, images = [], []
        for _ in range(self.config.batch_size):
            metadata = self.sampler.sample(rng)
            images.append(scene_for(metadata, rng, self.render).image)
            prompts.append("" if rng.random() < self.config.prompt_dropout else metadata["prompt"])
        return self.tokenize(prompts), torch.from_numpy(np.stack(images))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        index, stride = (info.id, info.num_workers) if info is not None else (0, 1)
        while True:
            yield self.batch(index)
            index += stride


def build_models(config: PretrainConfig) -> tuple[torch.nn.Module, ShapesTextEncoder]:
    from diffusers import SD3Transformer2DModel

    text = ShapesTextEncoder(TextEncoderConfig(width=config.text_width, layers=config.text_layers,
                                               heads=config.text_heads, pooled_dim=config.pooled_dim))
    transformer = SD3Transformer2DModel(
        sample_size=config.image_size, patch_size=config.patch_size, in_channels=3, out_channels=3,
        num_layers=config.layers, attention_head_dim=config.head_dim, num_attention_heads=config.heads,
        joint_attention_dim=config.text_width, caption_projection_dim=config.heads * config.head_dim,
        pooled_projection_dim=config.pooled_dim, pos_embed_max_size=config.image_size // config.patch_size,
        qk_norm="rms_norm")
    return transformer, text


@torch.no_grad()
def sample_images(transformer, text: ShapesTextEncoder, prompts: list[str], steps: int, guidance: float,
                  generator: torch.Generator, image_size: int) -> torch.Tensor:
    """Euler sampling of the rectified flow from sigma=1 to 0 on a uniform grid, with CFG; uint8 [B, H, W, 3]."""
    device = next(transformer.parameters()).device
    emb, pooled = text.encode(prompts)
    null_emb, null_pooled = text.encode([""] * len(prompts))
    x = torch.randn(len(prompts), 3, image_size, image_size, generator=generator, device="cpu").to(device)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((len(prompts) * 2,), 1000.0 * float(sigma), device=device)
        out = transformer(hidden_states=torch.cat([x, x]), timestep=t,
                          encoder_hidden_states=torch.cat([null_emb, emb]),
                          pooled_projections=torch.cat([null_pooled, pooled]), return_dict=False)[0].float()
        uncond, cond = out.chunk(2)
        x = x + float(sigma_next - sigma) * (uncond + guidance * (cond - uncond))
    return from_pixels(x)


def heldout_scores(transformer, text, config: PretrainConfig, device: torch.device) -> dict[str, float]:
    """GenEval strict accuracy per tag (and overall) on the held-out prompts, shapes detector."""
    from trainer.shapes_world.evaluate import geneval_summary

    entries = [e for e in read_jsonl(HELDOUT_FILE) for _ in range(config.eval_samples)]
    generator = torch.Generator().manual_seed(config.seed + 1)
    images = []
    for start in range(0, len(entries), 256):
        chunk = [e["prompt"] for e in entries[start: start + 256]]
        images.append(sample_images(transformer, text, chunk, config.eval_steps, config.eval_guidance, generator,
                                    config.image_size))
    summary, _ = geneval_summary(torch.cat(images).numpy(), entries)
    return summary


def save_checkpoint(transformer, text, config: PretrainConfig, meta: dict) -> None:
    """Write out_dir atomically (a sibling temp dir renamed over it)."""
    out = Path(config.out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[config.save_dtype]
    transformer_cpu = type(transformer).from_config(transformer.config)
    transformer_cpu.load_state_dict({k: v.detach().cpu() for k, v in transformer.state_dict().items()})
    transformer_cpu.to(dtype).save_pretrained(tmp / "transformer")
    text.save_pretrained(tmp / "text_encoder", dtype=dtype)
    info = {"image_size": config.image_size, "pretrain_config": asdict(config), **meta}
    (tmp / MODEL_CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _block_count(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(key.split(".")[1]) for key in state if key.startswith("transformer_blocks."))


def grown_state(state: dict[str, torch.Tensor], transformer) -> dict[str, torch.Tensor]:
    """A shallower transformer's weights placed in a deeper one (depth up-scaling that keeps the function): its blocks
    but the last fill the first places, its last block (the SD3 context_pre_only one) the last place, and each new
    block in between keeps its fresh init with its adaLN-zero modulations (norm1, norm1_context) set to zero, so its
    gates are 0 and it passes both streams through unchanged until training opens them."""
    old, new = _block_count(state), len(transformer.transformer_blocks)
    if new < old:
        raise ValueError(f"cannot shrink a {old}-block transformer to {new} blocks")
    fresh = transformer.state_dict()
    source = {j: j for j in range(old - 1)} | {new - 1: old - 1}
    grown = {key: value for key, value in state.items() if not key.startswith("transformer_blocks.")}
    for j in range(new):
        prefix = f"transformer_blocks.{j}."
        for key in (k for k in fresh if k.startswith(prefix)):
            if j in source:
                grown[key] = state[f"transformer_blocks.{source[j]}.{key[len(prefix):]}"]
            elif key[len(prefix):].startswith(("norm1.linear.", "norm1_context.linear.")):
                grown[key] = torch.zeros_like(fresh[key])
            else:
                grown[key] = fresh[key]
    return grown


def load_weights(transformer, text: ShapesTextEncoder, directory: Path) -> None:
    """Copy a saved checkpoint's weights into freshly built modules. The architectures must match, except that a
    checkpoint with fewer transformer blocks is grown to the built depth (`grown_state`)."""
    from safetensors.torch import load_file

    for module, path in ((transformer, directory / "transformer" / "diffusion_pytorch_model.safetensors"),
                         (text, directory / "text_encoder" / "model.safetensors")):
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        if module is transformer and _block_count(state) != len(transformer.transformer_blocks):
            state = grown_state(state, transformer)
        module.load_state_dict(state, strict=True)


def learning_rate(config: PretrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(config: PretrainConfig) -> dict:
    """Run pretraining; returns the final metadata written to shapes_model.json."""
    import copy

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    transformer, text = build_models(config)
    if config.init_from:
        load_weights(transformer, text, Path(config.init_from))
    transformer.to(device).train()
    text.to(device).train()
    ema_transformer, ema_text = copy.deepcopy(transformer).eval(), copy.deepcopy(text).eval()
    params = list(transformer.parameters()) + list(text.parameters())
    ema_params = list(ema_transformer.parameters()) + list(ema_text.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    data = SceneBatches(config, text)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=config.num_workers,
                                         persistent_workers=config.num_workers > 0,
                                         prefetch_factor=4 if config.num_workers > 0 else None)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp_bf16 and device.type == "cuda")
    log_path = Path(config.out_dir).with_name(Path(config.out_dir).name + "_log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in params)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters on {device}; config {asdict(config)}", flush=True)
    start = time.time()
    recent: list[float] = []  # the last 10 logged losses
    meta, step = {}, 0

    def checkpoint(final: bool) -> None:
        nonlocal meta
        meta = {"step": step, "wall_s": round(time.time() - start, 1),
                "loss": float(np.mean(recent)) if recent else None,  # mean of the last 10 logged losses
                "parameters": n_params}
        if config.eval_every >= 0 and (final or (config.eval_every > 0 and step % config.eval_every == 0)):
            meta["heldout_strict"] = heldout_scores(ema_transformer, ema_text, config, device)
        save_checkpoint(ema_transformer, ema_text, config, meta)
        print(f"saved step {step}: {json.dumps(meta)}", flush=True)

    batches = iter(loader)
    while step < config.steps:
        ids, images = next(batches)
        ids, x0 = ids.to(device, non_blocking=True), to_pixels(images.to(device, non_blocking=True))
        b = x0.shape[0]
        eps = torch.randn(x0.shape, generator=noise_gen, device=device)
        sigma = torch.sigmoid(config.logit_normal_mean + config.logit_normal_std *
                              torch.randn(b, generator=noise_gen, device=device))
        s = sigma.view(b, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        with autocast:
            emb, pooled = text(ids)
            pred = transformer(hidden_states=xt, timestep=1000.0 * sigma, encoder_hidden_states=emb,
                               pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), eps - x0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - config.ema_decay)
        step += 1
        value = float(loss.detach()) if step % config.log_every == 0 or step == 1 else None
        if value is not None:
            recent = (recent + [value])[-10:]
            elapsed = time.time() - start
            line = {"step": step, "loss": round(value, 5), "lr": learning_rate(config, step - 1),
                    "wall_s": round(elapsed, 1), "steps_per_s": round(step / elapsed, 2)}
            print(json.dumps(line), flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        timed_out = config.time_limit_s > 0 and time.time() - start > config.time_limit_s
        if timed_out or step == config.stop_at_step:
            break
        if step % config.save_every == 0 and step < config.steps:
            checkpoint(final=False)
    checkpoint(final=True)
    return meta


def config_from_args(argv: list[str] | None = None) -> PretrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, PretrainConfig)
    return dataclass_from_namespace(PretrainConfig, vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    pretrain(config_from_args(argv))


if __name__ == "__main__":
    main()
