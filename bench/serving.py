"""Serving benchmark: three ratios measured side by side in one run, on the CPU, through real service processes.

  1. service throughput at saturation / in-process throughput of the same scorer        (target >= 0.90)
  2. per-image transport cost of a 512x512 image: base64-PNG JSON and JPEG vs raw protobuf (raw >= 10x cheaper)
  3. 16 concurrent one-image clients / one client sending 16-image requests              (target >= 0.85)

The scorer is the real PickScoreScorer over a random CLIP of ViT-B/32 size built from config (save_pretrained to a
temp dir, served by `python -m services.pickscore`), with torch on one thread in both the service and the
in-process baseline, so its forward costs well over 50 ms per batch. Transport cost (2) is measured against the
brightness test scorer (negligible compute), so it is encode + transfer + decode alone.

    .venv/bin/python bench/serving.py [--rounds 6]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from google.protobuf import json_format
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos.reward.v1 import reward_pb2  # noqa: E402
from services.common.codec import encoded_image, raw_image  # noqa: E402
from services.common.scorer import ScorerInput  # noqa: E402
from tests.support.service_process import running_service  # noqa: E402

BATCH = 16
PROTOBUF = {"content-type": "application/x-protobuf", "accept": "application/x-protobuf"}
JSON = {"content-type": "application/json", "accept": "application/json"}


def build_vit_b_clip(directory: Path) -> Path:
    """A random CLIP with ViT-B/32 image and text towers, saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from services.pickscore.tiny_model import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                                 crop_size={"height": 224, "width": 224}),
                              tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory


def images_512(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random 512x512 RGB images (gradients + noise), so PNG and JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 512, dtype=np.float32)
    result = []
    for _ in range(count):
        colour = rng.uniform(0, 255, (1, 1, 3)).astype(np.float32)
        base = colour * ramp[None, :, None] + (255 - colour) * ramp[:, None, None]
        noise = rng.normal(0, 12, (512, 512, 3)).astype(np.float32)
        result.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return result


def request_of(images: list[np.ndarray], image_of=raw_image) -> reward_pb2.ScoreRequest:
    """A request built in place (no intermediate messages, so the pixels are copied once)."""
    request = reward_pb2.ScoreRequest()
    for image in images:
        item = request.items.add(prompt="a photo of the cat")
        if image_of is raw_image:
            height, width, channels = image.shape
            item.image.raw.height, item.image.raw.width, item.image.raw.channels = height, width, channels
            item.image.raw.pixels = np.ascontiguousarray(image).tobytes()
        else:
            item.image.CopyFrom(image_of(image))
    return request


async def run_clients(url: str, clients: int, requests_per_client: int, images: list[np.ndarray]) -> float:
    """Each client sends its requests back to back; returns images scored per second over the whole run."""
    body = request_of(images).SerializeToString()

    async def client(http: httpx.AsyncClient) -> None:
        for _ in range(requests_per_client):
            reply = await http.post(url + "/v1/score", content=body, headers=PROTOBUF)
            reply.raise_for_status()

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as http:
        await http.post(url + "/v1/score", content=body, headers=PROTOBUF)  # connections warm
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return clients * requests_per_client * len(images) / (time.perf_counter() - started)


def in_process_throughput(model_dir: Path, images: list[np.ndarray], rounds: int) -> tuple[float, float]:
    """Images per second of PickScoreScorer.score on batches of BATCH, and seconds per batch."""
    import torch

    from services.pickscore.scorer import PickScoreScorer

    torch.set_num_threads(1)
    scorer = PickScoreScorer(model=str(model_dir), processor=str(model_dir))
    scorer.setup()
    inputs = [ScorerInput(image=image, prompt="a photo of the cat") for image in images]
    scorer.score(inputs)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        scorer.score(inputs)
    elapsed = time.perf_counter() - started
    return rounds * len(inputs) / elapsed, elapsed / rounds


def transport_cost_ms(url: str, images: list[np.ndarray], repeats: int) -> dict[str, tuple[float, float]]:
    """Per-image ms of client encode + POST + server decode (zero-cost scorer), and payload MiB per request."""
    def png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")  # Pillow's default zlib level (6)
        return buffer.getvalue()

    def jpeg(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    variants = {
        "raw protobuf": lambda: (request_of(images).SerializeToString(), PROTOBUF),
        "base64-PNG JSON": lambda: (json_format.MessageToJson(request_of(images, lambda i: encoded_image(png(i))))
                                    .encode(), JSON),
        "base64-JPEG q95 JSON": lambda: (json_format.MessageToJson(request_of(images, lambda i: encoded_image(jpeg(i))))
                                         .encode(), JSON),
        "JPEG q95 protobuf": lambda: (request_of(images, lambda i: encoded_image(jpeg(i))).SerializeToString(),
                                      PROTOBUF),
    }
    results = {}
    with httpx.Client(timeout=120) as http:
        for name, make in variants.items():
            times, size = [], 0
            for _ in range(repeats + 1):
                started = time.perf_counter()
                body, headers = make()
                reply = http.post(url + "/v1/score", content=body, headers=headers)
                reply.raise_for_status()
                times.append(time.perf_counter() - started)
                size = len(body)
            results[name] = (statistics.median(times[1:]) * 1000 / len(images), size / 2**20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="batches of 16 per throughput measurement")
    args = parser.parse_args()
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    images = images_512(BATCH)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_vit_b_clip(Path(scratch) / "clip-vit-b32")
        local_rate, batch_s = in_process_throughput(model_dir, images, args.rounds)
        with running_service("services.pickscore", "--model", str(model_dir), "--processor", str(model_dir),
                             "--max-batch-items", str(BATCH), "--max-wait-ms", "10", "--log-level", "warning",
                             env=env, ready_timeout_s=300) as service:
            saturated = asyncio.run(run_clients(service.url, 3, max(1, args.rounds // 3 * 1), images))
            one_client = asyncio.run(run_clients(service.url, 1, args.rounds, images))
            single_images = asyncio.run(run_clients(service.url, BATCH, args.rounds, images[:1]))
    with running_service("tests.support.test_scorers", "--max-batch-items", str(BATCH), "--log-level", "warning",
                         env=env) as service:
        transport = transport_cost_ms(service.url, images, repeats=3)

    raw_ms = transport["raw protobuf"][0]
    print(f"scorer: random CLIP ViT-B/32 (PickScoreScorer), CPU, 1 torch thread, {batch_s * 1000:.0f} ms per batch "
          f"of {BATCH} 512x512 images")
    print(f"\n1. throughput  in-process {local_rate:.1f} img/s   service at saturation (3 clients x 16-image requests) "
          f"{saturated:.1f} img/s")
    print(f"   ratio service / in-process = {saturated / local_rate:.2f}   (target >= 0.90)")
    print("\n2. transport cost per 512x512 image (client encode + POST + server decode; zero-cost scorer)")
    for name, (ms, mib) in transport.items():
        print(f"   {name:22s} {ms:7.2f} ms/image   {mib:6.2f} MiB per 16-image request   "
              f"{ms / raw_ms:6.1f}x raw")
    print(f"   ratio base64-PNG / raw = {transport['base64-PNG JSON'][0] / raw_ms:.1f}   (target >= 10)")
    print(f"\n3. 16 concurrent one-image clients {single_images:.1f} img/s   one client with 16-image requests "
          f"{one_client:.1f} img/s")
    print(f"   ratio = {single_images / one_client:.2f}   (target >= 0.85)")


if __name__ == "__main__":
    main()
