"""Per-image service overhead against forward time, for each real scorer at tiny and ViT-B-like sizes.

For each (reward, size): the scorer's forward is timed in this process (`score` over a batch of N images) and the
same weights are served by the real `python -m services.<name>` process on 127.0.0.1, which gets the same N images in
one protobuf request (raw uint8 pixels, what the trainer sends); the two are interleaved R times, medians reported.
The overhead per image is (request wall time - the reply's compute_ms) / N: what serving adds around the service's
own prepare + forward (protobuf encoding, HTTP on loopback, decoding, queueing, batching, the reply). The in-process
time is printed beside it as a reference (another process's load on the shared cores moves it).
Sizes: pickscore vit-b = CLIP ViT-B/16 shapes (224 px); hpsv3 vit-b = Qwen2-VL with width 768 and 12 layers in both
towers (448 px, 256 visual tokens); geneval-mmdet "vit-b" = a medium Mask2Former (Swin embed 64, 2 blocks per stage,
3 decoder layers, 800 px test scale) + a width-128 CLIP at 224 px. All random weights, CPU.
Both run side by side in one run, on the same machine, so the ratio is what to read, not the absolute times.

    .venv/bin/python -m bench.serving_scorers                   # pickscore + hpsv3 (main venv)
    .venv-mmdet/bin/python -m bench.serving_scorers --only geneval-mmdet   # the mmdet venv adds geneval-mmdet
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from protos.reward.v1 import reward_pb2  # noqa: E402
from services.common.scorer import Scorer, ScorerInput  # noqa: E402
from tests.support.service_process import running_service  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@dataclass
class Case:
    """One scorer at one size."""

    reward: str  # reward name
    size: str  # "tiny" or "vit-b"
    images: int  # N: images per request and per in-process batch
    repeats: int  # R: timed runs of each kind
    image_side: int  # side of the square test images, pixels
    build: Callable[[Path], tuple[Scorer, str, list[str]]]  # dir -> (scorer, service module, service args)
    metadata: dict | None = None  # request metadata (GenEval)


def pickscore_case(directory: Path, vit_b: bool) -> tuple[Scorer, str, list[str]]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from services.pickscore.scorer import PickScoreScorer
    from services.pickscore.tiny_model import build_tiny_pickscore, tiny_clip_tokenizer

    if vit_b:  # CLIP ViT-B/16 shapes (PickScore itself is ViT-H/14)
        tokenizer = tiny_clip_tokenizer()
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=8, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                               num_hidden_layers=12, num_attention_heads=12), projection_dim=512)
        CLIPModel(config).save_pretrained(directory)
        CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(directory)
    else:
        build_tiny_pickscore(directory)
    return (PickScoreScorer(model=str(directory), processor=str(directory), device="cpu"), "services.pickscore",
            ["--model", str(directory), "--processor", str(directory), "--device", "cpu"])


def hpsv3_case(directory: Path, vit_b: bool) -> tuple[Scorer, str, list[str]]:
    from services.hpsv3.scorer import HPSv3Config, HPSv3Scorer
    from services.hpsv3.tiny import TinyHPSv3Size, build_tiny_hpsv3

    size = TinyHPSv3Size(hidden=768, layers=12, heads=12, vision_width=768, vision_depth=12, vision_heads=12) \
        if vit_b else TinyHPSv3Size()
    base, checkpoint = build_tiny_hpsv3(directory, size)
    return (HPSv3Scorer(HPSv3Config(model=str(base), checkpoint=str(checkpoint), device="cpu")), "services.hpsv3",
            ["--model", str(base), "--checkpoint", str(checkpoint), "--device", "cpu"])


def geneval_mmdet_case(directory: Path, vit_b: bool) -> tuple[Scorer, str, list[str]]:
    from services.geneval.mmdet_backend import MMDetBackend, MMDetBackendConfig
    from services.geneval.mmdet_tiny import build_tiny_geneval_mmdet
    from services.geneval.scorer import GenEvalScorer

    config, checkpoint, clip = build_tiny_geneval_mmdet(directory, medium=vit_b)
    backend = MMDetBackend(MMDetBackendConfig(config=str(config), checkpoint=str(checkpoint), clip_model=str(clip),
                                              device="cpu"))
    return (GenEvalScorer(backend), "services.geneval",
            ["--detector", "mmdet", "--mmdet-config", str(config), "--mmdet-checkpoint", str(checkpoint),
             "--clip-model", str(clip), "--mmdet-device", "cpu"])


COLOUR_CLAUSE = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}
CASES = [
    Case("pickscore", "tiny", 16, 7, 512, lambda d: pickscore_case(d, False)),
    Case("pickscore", "vit-b", 8, 3, 512, lambda d: pickscore_case(d, True)),
    Case("hpsv3", "tiny", 8, 7, 512, lambda d: hpsv3_case(d, False)),
    Case("hpsv3", "vit-b", 4, 3, 512, lambda d: hpsv3_case(d, True)),
    Case("geneval-mmdet", "tiny", 8, 5, 512, lambda d: geneval_mmdet_case(d, False), COLOUR_CLAUSE),
    Case("geneval-mmdet", "vit-b", 4, 3, 512, lambda d: geneval_mmdet_case(d, True), COLOUR_CLAUSE),
]


def request_body(images: list[np.ndarray], metadata: dict | None) -> bytes:
    request = reward_pb2.ScoreRequest()
    for image in images:
        item = request.items.add(prompt="a photo of a red dog")
        item.image.raw.height, item.image.raw.width, item.image.raw.channels = image.shape
        item.image.raw.pixels = image.tobytes()
        if metadata is not None:
            item.metadata.update(metadata)
    return request.SerializeToString()


def run_case(case: Case) -> dict[str, float]:
    """Interleave in-process forwards and served requests (forward, request, forward, ...) so that load from
    other processes on the machine hits both alike; medians per image."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (case.image_side, case.image_side, 3), dtype=np.uint8) for _ in range(case.images)]
    items = [ScorerInput(image=image, prompt="a photo of a red dog", metadata=case.metadata) for image in images]
    body = request_body(images, case.metadata)
    headers = {"content-type": "application/x-protobuf", "accept": "application/x-protobuf"}
    env = {"REWARD_MAX_BATCH_ITEMS": str(case.images), "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}
    forward, served, compute = [], [], []
    # The in-process forward runs in a worker thread, as the server runs it: measured here, a main-thread score()
    # of the tiny HPSv3 took 180 ms per image against 66 ms in a worker thread (same process, same inputs).
    worker = ThreadPoolExecutor(max_workers=1)
    with tempfile.TemporaryDirectory() as directory:
        scorer, module, args = case.build(Path(directory))
        scorer.setup()
        with running_service(module, *args, env=env, ready_timeout_s=600) as service:
            worker.submit(scorer.score, items).result()  # warm-up
            httpx.post(service.url + "/v1/score", content=body, headers=headers, timeout=600)  # warm-up
            for _ in range(case.repeats):
                start = time.perf_counter()
                worker.submit(scorer.score, items).result()
                forward.append(time.perf_counter() - start)
                start = time.perf_counter()
                reply = httpx.post(service.url + "/v1/score", content=body, headers=headers, timeout=600)
                served.append(time.perf_counter() - start)
                assert reply.status_code == 200, reply.text
                compute.append(reward_pb2.ScoreResponse.FromString(reply.content).compute_ms / 1000)
    per_image = {name: 1000 * statistics.median(values) / case.images
                 for name, values in (("forward_ms", forward), ("served_ms", served), ("compute_ms", compute))}
    overheads = [wall - busy for wall, busy in zip(served, compute)]
    per_image["overhead_ms"] = 1000 * statistics.median(overheads) / case.images
    return per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="rewards to run (default: all importable)")
    parser.add_argument("--sizes", nargs="*", default=["tiny", "vit-b"], help="sizes to run")
    args = parser.parse_args()
    has_mmdet = importlib.util.find_spec("mmdet") is not None
    print(f"torch threads {torch.get_num_threads()}; per image, medians. in-process = score() here (worker thread); "
          "service compute = the reply's compute_ms (prepare + forward in the service); "
          "overhead = request wall time - service compute")
    print(f"{'reward':<14} {'size':<6} {'N':>3} {'in-process ms':>14} {'served ms':>10} {'compute ms':>11} "
          f"{'overhead ms':>12} {'overhead/compute':>17}")
    for case in CASES:
        if args.only is not None and case.reward not in args.only:
            continue
        if case.size not in args.sizes or (case.reward == "geneval-mmdet" and not has_mmdet):
            continue
        result = run_case(case)
        print(f"{case.reward:<14} {case.size:<6} {case.images:>3} {result['forward_ms']:>14.1f} "
              f"{result['served_ms']:>10.1f} {result['compute_ms']:>11.1f} {result['overhead_ms']:>12.1f} "
              f"{result['overhead_ms'] / result['compute_ms']:>17.3f}", flush=True)


if __name__ == "__main__":
    main()
