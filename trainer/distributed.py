"""Data parallelism under torchrun: process group, the `gather` the algorithms use, LoRA gradient all-reduce.

Launch: `torchrun --nproc-per-node K -m trainer ...`. Backend gloo on CPU, nccl on CUDA. Each rank samples its own
contiguous block of the epoch's prompt groups (trainer.prompt_data), talks to the reward services with its own
client, and calls `algo.prepare_training(..., gather)` with `gather` = all_gather concatenated in rank order, so
advantage statistics (e.g. Flow-GRPO's batch std) are global. Gradients of the LoRA parameters are averaged
with one flat all_reduce per optimizer step (explicit rather than DDP's hooks: the training units are the
algorithm's, and ranks may hold different numbers of them). Only rank 0 writes checkpoints and logs; on --resume every rank reads the
checkpoint, so output_dir must be on a file system all ranks see.

Without torchrun (no WORLD_SIZE in the environment) everything here is the identity.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the data-parallel group."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the GPU)
    enabled: bool = False  # a torch.distributed process group is initialised

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group if WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, enabled=True)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    return tensor.device if dist.get_backend() != "gloo" else torch.device("cpu")


def make_gather(ctx: DistContext):
    """The `Gather` of trainer.algorithms.base: local [n, ...] -> concatenation over ranks in rank order."""

    def gather(local: torch.Tensor) -> torch.Tensor:
        if not ctx.enabled:
            return local
        device = local.device
        work = local.detach().to(_comm_device(local)).contiguous()
        sizes = [torch.zeros(1, dtype=torch.int64, device=work.device) for _ in range(ctx.world_size)]
        dist.all_gather(sizes, torch.tensor([work.shape[0]], dtype=torch.int64, device=work.device))
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        padded = torch.zeros((longest, *work.shape[1:]), dtype=work.dtype, device=work.device)
        padded[: work.shape[0]] = work
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(device)

    return gather


def all_reduce_mean_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of `params` over ranks (a missing grad counts as zero)."""
    if not ctx.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    device = flat.device
    flat = flat.to(_comm_device(flat))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = (flat / ctx.world_size).to(device)
    offset = 0
    for param, grad in zip(params, grads):
        count = grad.numel()
        param.grad = flat[offset: offset + count].view_as(param).to(param.dtype).clone()
        offset += count


def broadcast_parameters(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Make every rank start from rank 0's values of `params`."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for param in params:
            buffer = param.data.to(_comm_device(param.data)).contiguous()
            dist.broadcast(buffer, src=0)
            param.data.copy_(buffer.to(param.device))


def all_reduce_max(value: int, ctx: DistContext) -> int:
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() != "gloo":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
