"""A tiny Stable Diffusion 3 of the real architecture, built from config, for tests (no downloads).

`build_tiny_sd3(directory)` builds every component of a `StableDiffusion3Pipeline` at toy size, seeded and
deterministic: an `SD3Transformer2DModel` (2 layers, the first with SD3.5's dual attention; RMS qk-norm; 4 heads of
8 = inner dim 32; patch 2; the last layer is context-pre-only as in the real model), two
`CLIPTextModelWithProjection` (hidden 16, projection 16) and a `T5EncoderModel` (d_model 32 = the transformer's
joint attention dim, as in SD3 where T5's width bounds the padded CLIP width), a 2-level `AutoencoderKL` (scale
factor 2, 16 latent channels like SD3's VAE) and a `FlowMatchEulerDiscreteScheduler` with shift 3. The tokenizers
are constructed in code (a byte-level CLIP BPE with a few merges; a character-level T5 unigram vocabulary), so
nothing is fetched. The whole pipeline is written with `save_pretrained`, so `SD3FlowModel` loads it through exactly
the path real weights take.

At the default resolution of 64 px the latents are 16 x 32 x 32.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

TINY_SD3_RESOLUTION = 64  # pixel size that gives 32x32 latents with the tiny VAE (scale factor 2)


def _clip_tokenizer():
    """Byte-level BPE CLIP tokenizer: the 256 byte symbols (alone and word-final) plus a few merges."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "f</w>"), ("r", "e")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _t5_tokenizer():
    """Character-level unigram T5 tokenizer (word-initial and inner pieces), no sentinel ids."""
    from transformers import T5TokenizerFast

    letters = string.ascii_letters
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in letters + string.digits]
    pieces += [(c, -4.0) for c in letters + string.digits + string.punctuation]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_tiny_sd3_pipeline(seed: int = 0):
    """The tiny StableDiffusion3Pipeline in memory (fp32, CPU), weights drawn with `seed`."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")

    def clip_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=16, intermediate_size=32, projection_dim=16,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
            bos_token_id=0, eos_token_id=1, pad_token_id=1))

    text_encoder = clip_encoder()
    text_encoder_2 = clip_encoder()
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=16, norm_num_groups=1, sample_size=TINY_SD3_RESOLUTION, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer, text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer)


def build_tiny_sd3(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny SD3 and save it as a full StableDiffusion3Pipeline directory; returns the directory."""
    directory = Path(directory)
    build_tiny_sd3_pipeline(seed).save_pretrained(directory)
    return directory
