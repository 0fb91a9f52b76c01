"""A tiny GenEval mmdet backend of the real architectures, built from config, for tests and benchmarks.

`build_tiny_geneval_mmdet(directory)` writes
- `tiny_mask2former.py`: mmdet's own mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco config (the file shipped in
  the mmdet package) with the sizes shrunk: Swin embed 32, one block per stage, 20 queries, one pixel-decoder
  and one transformer-decoder layer, `init_cfg=None` (no pretrained backbone is fetched);
- `tiny_mask2former.pth`: its randomly initialised weights (mmengine checkpoint layout: `state_dict` + `meta`
  with the COCO class names), loaded back by `init_detector` exactly like the real checkpoint;
- `clip/`: a tiny CLIPModel + processor (services.pickscore.tiny_model) for the colour classifier.

`designed_class`, when given, makes the detector's output known in advance, so tests can check the path from
image to GenEval reply: every query classifies as that COCO class with probability ~0.996 and its mask logits are
a large positive constant (mask feature projection zeroed with bias 1, mask embedding bias 1), so each image yields
`queries` instances of the class, each covering the whole image with confidence ~0.996.
"""
from __future__ import annotations

from pathlib import Path

import torch

from services.geneval.mmdet_backend import COCO_CLASSES, bundled_config


def tiny_config(medium: bool = False, queries: int = 20):
    """mmdet's GenEval config with small sizes (`medium`: Swin embed 64, two blocks per stage, 3 decoder layers)."""
    from mmengine.config import Config

    config = Config.fromfile(bundled_config())
    embed = 64 if medium else 32
    feat = 128 if medium else 32
    layers = 2 if medium else 1
    model = config.model
    model.backbone.update(embed_dims=embed, depths=[layers] * 4, num_heads=[1, 2, 4, 8], init_cfg=None)
    head = model.panoptic_head
    head.update(in_channels=[embed, 2 * embed, 4 * embed, 8 * embed], feat_channels=feat, out_channels=feat,
                num_queries=queries)
    decoder_layers = 3 if medium else 1
    encoder = head.pixel_decoder.encoder
    encoder.num_layers = layers
    encoder.layer_cfg.self_attn_cfg.update(embed_dims=feat, num_heads=4)
    encoder.layer_cfg.ffn_cfg.update(embed_dims=feat, feedforward_channels=2 * feat)
    head.pixel_decoder.positional_encoding.num_feats = feat // 2
    head.positional_encoding.num_feats = feat // 2
    head.transformer_decoder.num_layers = decoder_layers
    head.transformer_decoder.layer_cfg.self_attn_cfg.update(embed_dims=feat, num_heads=4)
    head.transformer_decoder.layer_cfg.cross_attn_cfg.update(embed_dims=feat, num_heads=4)
    head.transformer_decoder.layer_cfg.ffn_cfg.update(embed_dims=feat, feedforward_channels=2 * feat)
    model.test_cfg.max_per_image = 100
    return config


def design_outputs(model, class_index: int) -> None:
    """Every query -> `class_index` with probability ~0.996, every mask -> the whole image (see module doc)."""
    head = model.panoptic_head
    with torch.no_grad():
        head.cls_embed.weight.zero_()
        head.cls_embed.bias.zero_()
        head.cls_embed.bias[class_index] = 10.0
        last = head.mask_embed[-1]
        last.weight.zero_()
        last.bias.fill_(1.0)
        projection = head.pixel_decoder.mask_feature
        projection.weight.zero_()
        projection.bias.fill_(1.0)


def build_tiny_geneval_mmdet(directory: Path, medium: bool = False, designed_class: str | None = None,
                             seed: int = 0) -> tuple[Path, Path, Path]:
    """Write the tiny config, checkpoint and CLIP under `directory`; returns (config, checkpoint, clip_dir)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from services.pickscore.tiny_model import build_tiny_pickscore

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    register_all_modules()
    config = tiny_config(medium)
    config_path = directory / "tiny_mask2former.py"
    config.dump(str(config_path))
    torch.manual_seed(seed)
    model = MODELS.build(config.model)
    if designed_class is not None:
        design_outputs(model, COCO_CLASSES.index(designed_class))
    checkpoint_path = directory / "tiny_mask2former.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": list(COCO_CLASSES)}}},
               checkpoint_path)
    clip_dir = build_tiny_pickscore(directory / "clip", image_size=224 if medium else 32,
                                    hidden_size=128 if medium else 32)
    return config_path, checkpoint_path, clip_dir
