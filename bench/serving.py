"""Serving benchmark: three ratios measured side by side in one run, on the CPU, through real service processes.

  1. service throughput at saturation / in-process throughput of the same scorer        (target >= 0.90)
  2. per-image transport cost of a 512x512 image: base64-PNG JSON and JPEG vs raw protobuf (raw >= 10x cheaper)
  3. 16 concurrent one-image clients / one client sending 16-image requests              (target >= 0.85)

The scorer is the real PickScoreScorer over a random CLIP of ViT-B/32 size built from config (save_pretrained to a
temp dir, served by `python -m services.pickscore`), with torch on one thread in both the service and the
in-process baseline, so its forward costs well over 50 ms per batch. Transport cost (2) is measured against the
brightness test scorer (negligible compute), so it is encode + transfer + decode alone.

    .venv/bin/python bench/serving.py [--rounds 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import re
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


def batch_stats(url: str) -> tuple[float, float]:
    """(forwards, items) counted by the service's batch-size histogram so far."""
    text = httpx.get(url + "/metrics").text
    count = float(re.search(r"^reward_batch_size_items_count (\S+)$", text, re.MULTILINE).group(1))
    total = float(re.search(r"^reward_batch_size_items_sum (\S+)$", text, re.MULTILINE).group(1))
    return count, total


def in_process_throughput(scorer, images: list[np.ndarray], rounds: int) -> tuple[float, float, float]:
    """Images per second of scorer.score on batches of BATCH, and seconds of prepare and forward per batch."""
    inputs = [ScorerInput(image=image, prompt="a photo of the cat") for image in images]
    prepare_s = forward_s = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        prepared = scorer.prepare(inputs)
        middle = time.perf_counter()
        scorer.score_prepared(prepared, inputs)
        prepare_s += middle - started
        forward_s += time.perf_counter() - middle
    return rounds * len(inputs) / (prepare_s + forward_s), prepare_s / rounds, forward_s / rounds


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
    parser.add_argument("--rounds", type=int, default=3, help="batches of 16 per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every measurement (median)")
    args = parser.parse_args()
    import torch

    from services.pickscore.scorer import PickScoreScorer

    torch.set_num_threads(1)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    images = images_512(BATCH)
    runs: dict[str, list[float]] = {name: [] for name in ("local", "prepare", "forward", "saturated", "one_client",
                                                          "single_images", "batch_saturated", "batch_single")}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_vit_b_clip(Path(scratch) / "clip-vit-b32")
        scorer = PickScoreScorer(model=str(model_dir), processor=str(model_dir))
        scorer.setup()
        scorer.score([ScorerInput(image=images[0], prompt="warm-up")])
        with running_service("services.pickscore", "--model", str(model_dir), "--processor", str(model_dir),
                             "--max-batch-items", str(BATCH), "--max-wait-ms", "10", "--log-level", "warning",
                             env=env, ready_timeout_s=300) as service:
            for _ in range(args.repeats):  # interleaved, so load from other processes hits every measurement alike
                rate, prepare_s, forward_s = in_process_throughput(scorer, images, args.rounds)
                runs["local"].append(rate)
                runs["prepare"].append(prepare_s)
                runs["forward"].append(forward_s)
                before = batch_stats(service.url)
                runs["saturated"].append(asyncio.run(run_clients(service.url, 3, max(1, args.rounds // 3), images)))
                after = batch_stats(service.url)
                runs["batch_saturated"].append((after[1] - before[1]) / max(1.0, after[0] - before[0]))
                runs["one_client"].append(asyncio.run(run_clients(service.url, 1, args.rounds, images)))
                before = batch_stats(service.url)
                runs["single_images"].append(asyncio.run(run_clients(service.url, BATCH, args.rounds, images[:1])))
                after = batch_stats(service.url)
                runs["batch_single"].append((after[1] - before[1]) / max(1.0, after[0] - before[0]))
    with running_service("tests.support.test_scorers", "--max-batch-items", str(BATCH), "--log-level", "warning",
                         env=env) as service:
        transport = transport_cost_ms(service.url, images, repeats=3)

    m = {name: statistics.median(values) for name, values in runs.items()}
    raw_ms = transport["raw protobuf"][0]
    print(f"scorer: random CLIP ViT-B/32 (PickScoreScorer), CPU, 1 torch thread; per batch of {BATCH} 512x512 images: "
          f"prepare {m['prepare'] * 1000:.0f} ms + forward {m['forward'] * 1000:.0f} ms; medians of {args.repeats} "
          "interleaved repeats")
    print(f"\n1. throughput  in-process (prepare then forward) {m['local']:.1f} img/s   service at saturation "
          f"(3 clients x 16-image requests) {m['saturated']:.1f} img/s, mean batch {m['batch_saturated']:.1f}")
    print(f"   ratio service / in-process = {m['saturated'] / m['local']:.2f}   (target >= 0.90; the service "
          "overlaps the next batch's prepare with the current forward)")
    print("\n2. transport cost per 512x512 image (client encode + POST + server decode; zero-cost scorer)")
    for name, (ms, mib) in transport.items():
        print(f"   {name:22s} {ms:7.2f} ms/image   {mib:6.2f} MiB per 16-image request   "
              f"{ms / raw_ms:6.1f}x raw")
    print(f"   ratio base64-PNG / raw = {transport['base64-PNG JSON'][0] / raw_ms:.1f}   (target >= 10)")
    print(f"\n3. 16 concurrent one-image clients {m['single_images']:.1f} img/s (mean batch "
          f"{m['batch_single']:.1f})   one client with 16-image requests {m['one_client']:.1f} img/s")
    print(f"   ratio = {m['single_images'] / m['one_client']:.2f}   (target >= 0.85)")


if __name__ == "__main__":
    main()
