"""One training step with the reward served over HTTP vs. the same reward called in-process, side by side.

Same tiny SD3 (built from config), same tiny PickScore weights, same prompts and seeds; one Trainer per reward
path. Each repetition times one epoch (= rollout, scoring, advantages, one optimizer step) with the HTTP client
(a real `python -m services.pickscore` process on 127.0.0.1) and then with `LocalRewardClient` (the PickScore
scorer in this process), alternating so both see the same machine load. Prints medians and the ratio
HTTP / in-process (target <= 1.05: scoring of one chunk hides behind the sampling of the next).

    python bench/trainer.py [--reps 6] [--groups 2] [--group-size 8] [--steps 4] [--resolution 64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="timed epochs per reward path")
    parser.add_argument("--groups", type=int, default=2, help="prompt groups per epoch")
    parser.add_argument("--group-size", type=int, default=8, help="images per group (G)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps N")
    parser.add_argument("--resolution", type=int, default=64, help="image side, pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    args = parser.parse_args()

    import torch

    from services.pickscore.scorer import PickScoreScorer
    from services.pickscore.tiny_model import build_tiny_pickscore
    from tests.support.service_process import running_service
    from trainer.__main__ import build_algorithm, build_model, build_reward_client
    from trainer.config import config_from_args
    from trainer.distributed import DistContext
    from trainer.local_rewards import LocalRewardClient
    from trainer.loop import Trainer
    from trainer.models.tiny_sd3 import build_tiny_sd3
    from trainer.prompt_data import PromptRecord

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    sd3_dir = build_tiny_sd3(work / "sd3")
    pick_dir = work / "pickscore"
    build_tiny_pickscore(pick_dir)
    prompts = [PromptRecord(p, None) for p in ("a red cat", "a photo of a dog", "the blue sky", "two green apples",
                                               "a yellow car", "a small house", "a tall tree", "three birds")]

    def make_trainer(reward_url: str, rewards) -> Trainer:
        flags = ["--model-kind", "sd3", "--model-path", str(sd3_dir), "--resolution", str(args.resolution),
                 "--lora-rank", "4", "--lora-alpha", "8", "--groups-per-epoch", str(args.groups),
                 "--group-size", str(args.group_size), "--num-steps", str(args.steps), "--guidance-scale", "1",
                 "--train-batch-size", str(args.group_size), "--grad-accumulation", "100000",
                 "--steps", "1000", "--output-dir", str(work / "run"), "--reward-url", reward_url, "--seed", "3"]
        config, _ = config_from_args(flags)
        model = build_model(config, DistContext())
        return Trainer(config, model, build_algorithm(config), rewards, prompts, ctx=DistContext())

    env = {"OMP_NUM_THREADS": "1"}
    with running_service("services.pickscore", "--model", str(pick_dir), "--processor", str(pick_dir),
                         env=env) as service:
        reward_url = f"name=pickscore,url={service.url}"
        http_config, _ = config_from_args(["--reward-url", reward_url])
        http_client = build_reward_client(http_config, seed=0)
        scorer = PickScoreScorer(model=str(pick_dir), processor=str(pick_dir), device="cpu", dtype="float32")
        scorer.setup()
        local_client = LocalRewardClient({"pickscore": (scorer, 1.0)})
        trainers = {"http": make_trainer(reward_url, http_client), "in_process": make_trainer(reward_url, local_client)}
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for trainer in trainers.values():  # warm-up epoch (first HTTP connection, /v1/info, allocator)
            trainer.train_epoch()
        for rep in range(args.reps):  # ABBA order: slow drifts of the machine's load hit both paths alike
            order = list(trainers) if rep % 2 == 0 else list(reversed(trainers))
            for name in order:
                start = time.perf_counter()
                trainers[name].train_epoch()
                times[name].append(time.perf_counter() - start)
        http_client.close()

    http, local = statistics.median(times["http"]), statistics.median(times["in_process"])
    paired = statistics.median(h / i for h, i in zip(times["http"], times["in_process"]))
    images = args.groups * args.group_size
    print(f"one training step ({args.groups} groups x {args.group_size} images, {args.steps} sampling steps, "
          f"{args.resolution} px, tiny SD3 + tiny PickScore, CPU, {args.threads} torch threads, {args.reps} reps):")
    print(f"  reward over HTTP (raw uint8 protobuf, service process): median {http * 1000:8.1f} ms  "
          f"({images} images)")
    print(f"  reward in-process (same scorer, same weights):           median {local * 1000:8.1f} ms")
    print(f"  ratio HTTP / in-process: {http / local:.3f} (medians), {paired:.3f} (median of paired reps), "
          f"{min(times['http']) / min(times['in_process']):.3f} (fastest reps)")
    print(json.dumps({"http_s": times["http"], "in_process_s": times["in_process"], "ratio": http / local,
                      "paired_ratio": paired}))


if __name__ == "__main__":
    main()
