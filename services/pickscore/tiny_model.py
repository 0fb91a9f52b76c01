"""`build_tiny_pickscore(directory)`: a tiny random CLIPModel + CLIPProcessor of PickScore's architecture, saved
with `save_pretrained`, so tests serve it through the very loading code real weights use (no downloads).

The tokenizer is a real byte-level CLIP BPE whose vocabulary (the 256 byte symbols, their word-final `</w>` forms,
a few merges, and the start/end tokens) is built in code. Other packages' tests import this builder.
"""
from __future__ import annotations

from pathlib import Path


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's printable stand-in for each of the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    mapping = {}
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[byte] for byte in range(256)]


_MERGES = ["t h", "th e</w>", "o f</w>", "p h", "ph o", "pho t", "phot o</w>", "c a", "ca t</w>",
           "d o", "do g</w>", "r e", "re d</w>"]


def tiny_clip_tokenizer():
    """A CLIPTokenizer with a vocabulary of 530 tokens built in code (no files, no downloads)."""
    from transformers import CLIPTokenizer

    symbols = _bytes_to_unicode()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for merge in _MERGES:
        merged = merge.replace(" ", "")
        if merged not in vocab_list:
            vocab_list.append(merged)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(merge.split(" ")) for merge in _MERGES], model_max_length=77)


def build_tiny_pickscore(directory: str | Path, *, image_size: int = 32, hidden_size: int = 32,
                         seed: int = 0) -> Path:
    """Save a tiny random CLIPModel and its CLIPProcessor into `directory`; return the directory."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer()
    text_config = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    vision_config = dict(image_size=image_size, patch_size=8, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # log(100): PickScore's trained scale, so values look like real ones
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    model.save_pretrained(directory)
    return directory
