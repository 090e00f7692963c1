"""Processes and data order: single-process or torchrun (DistributedDataParallel).

Under ``torchrun --nproc_per_node=N -m tat_ext train ...`` (RANK/WORLD_SIZE/LOCAL_RANK set) the
processes join a group (gloo on CPU, nccl on GPU). :class:`GlobalBatchSampler` makes N processes
train on exactly the batches one process would: every process draws the same epoch permutation,
cuts it into the same global batches, and takes every N-th example of each; each process scales
its summed loss by N/B, so DDP's gradient average is the global batch mean.
(``torch.utils.data.DistributedSampler`` splits the epoch rather than each batch and pads it, which
would make the batches, and so the training curve, depend on N.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, List

import torch
import torch.distributed as dist

from tat_ext.errors import UserError
from tat_ext.utils.devices import resolve_device

__all__ = ["GlobalBatchSampler", "Processes", "setup_processes"]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run; ``world == 1`` without torchrun."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # this run created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def broadcast(self, obj: Any) -> Any:
        """``obj`` of rank 0 on every process (pickled; for small setup messages)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sum over processes, in float64."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_processes(device: str) -> Processes:
    """Join the torchrun process group if launched by torchrun; resolve the device.

    Under torchrun each process uses GPU ``LOCAL_RANK`` (``--device cuda``) or the CPU.

    Raises:
        UserError: the device is not available (named as ``--device``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(0, 1, resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise UserError("--device", f"{device}: under torchrun each process uses GPU LOCAL_RANK; pass --device cuda "
                                    "(and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    resolved = resolve_device(device, default_index=local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), resolved, owns_group)


class GlobalBatchSampler:
    """The index batches of one epoch for this process (see the module docstring).

    The permutation comes from ``generator``; the last incomplete global batch is dropped, so
    every step sees exactly ``batch_size`` examples (a different tail is dropped every epoch).
    """

    def __init__(self, num_examples: int, batch_size: int, rank: int, world: int) -> None:
        if batch_size % world:
            raise UserError("--batch-size", f"the global batch {batch_size} must be divisible by the "
                                            f"number of processes ({world})")
        if batch_size > num_examples:
            raise UserError("--batch-size", f"{batch_size} is larger than the training set "
                                            f"({num_examples} examples)")
        self.num_examples, self.batch_size, self.rank, self.world = num_examples, batch_size, rank, world

    def __len__(self) -> int:
        return self.num_examples // self.batch_size

    def epoch(self, generator: torch.Generator, start: int = 0) -> Iterator[torch.Tensor]:
        """This process's share of global batches ``start``, ``start + 1``, … of the epoch whose
        permutation ``generator`` draws next."""
        order = torch.randperm(self.num_examples, generator=generator)
        for step in range(start, len(self)):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield batch[self.rank::self.world]
