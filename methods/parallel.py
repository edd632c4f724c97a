"""Data parallelism for one cell: a batch split over processes, with results that do not depend on how many.

The rule that makes a cell's result independent of the process count: every process draws every random tensor of
the *whole* batch, from the same generator, and keeps its own rows (``Shard.randn``). The generator streams are then
identical on every rank and identical to a single process's, so the initial noise, the variance noise, DRaFT-LV's and
ReFL's re-noising and every per-step choice (ReFL's and DRTune's stop step, AlignProp's cutoff, DDPO's shuffles) are
the same draws as with one process, whatever the number of processes; the extra draws cost a few random numbers per
latent, nothing beside a denoiser call. (A counter-based scheme, one seed per global sample index, gives the same
property; this one also keeps every single-process result bit for bit as it was.)

Gradients: each process backpropagates its rows' part of the loss; ``all_reduce_grads`` then leaves every process the
whole batch's gradient, so the clip and the optimiser step are the same on every rank and the LoRA weights stay
identical without being broadcast. Methods whose loss is a mean over the batch reduce by ``mean`` (equal shards);
DDPO normalises its PPO terms by the whole minibatch's size and reduces by ``sum`` (a minibatch's rows are not split
evenly). A rank that contributed nothing still joins the reduction (zeros), so no branch can leave a rank waiting.

On one process (``SINGLE``) every operation is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch


class ShardError(ValueError):
    """A batch that does not split evenly over the processes: one line, before any work."""


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def span(self, n_global: int) -> tuple[int, int]:
        if n_global % self.world:
            raise ShardError(f"a batch of {n_global} does not split evenly over {self.world} processes: use a batch "
                             f"size that is a multiple of {self.world}")
        per = n_global // self.world
        return self.rank * per, (self.rank + 1) * per

    def local(self, batch: Sequence[Any]) -> list[Any]:
        lo, hi = self.span(len(batch))
        return list(batch[lo:hi])

    def randn(self, shape: Sequence[int], generator: torch.Generator, device, dtype=None) -> torch.Tensor:
        """This rank's rows of a standard-normal tensor drawn for the whole batch (``shape[0]`` is the local size)."""
        shape = tuple(shape)
        if not self.distributed:
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)
        full = torch.randn((shape[0] * self.world, *shape[1:]), generator=generator, device=device, dtype=dtype)
        return full[self.rank * shape[0]:(self.rank + 1) * shape[0]]

    # ------------------------------------------------------------------------------------------- collectives
    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter], op: str = "mean") -> None:
        """One flat all-reduce of every parameter's gradient (missing gradients count as zeros)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if op == "mean":
            flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's equal-sized tensor, concatenated in rank order (the whole batch's rows in order)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank: decisions every rank must take together (stop, preempt)."""
        if not self.distributed:
            return [bool(f) for f in flags]
        import torch.distributed as dist

        t = torch.tensor([float(f) for f in flags], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]


SINGLE = Shard()


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_environment(device: str = "cpu") -> Shard:
    """The process group a launcher set up (``accelerate launch``, ``torchrun``, or ``--num-processes``: RANK,
    WORLD_SIZE, MASTER_ADDR/PORT), initialised through accelerate (gloo on CPU, nccl on CUDA); ``SINGLE`` when not
    launched that way."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    from datetime import timedelta

    from accelerate import PartialState

    # a collective that waits longer than this for a rank (stuck, not dead: a dead one fails it at once) raises
    timeout = timedelta(seconds=float(os.environ.get("BENCH_COLLECTIVE_TIMEOUT_S", "900")))
    state = PartialState(cpu=not str(device).startswith("cuda"), timeout=timeout)
    return Shard(rank=state.process_index, world=state.num_processes)
