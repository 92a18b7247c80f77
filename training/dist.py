"""Where a process stands in a ``torchrun`` data-parallel training job, and the few
collectives the trainers need to keep their processes in step (plans, caps, stops).

One process when launched normally: every method is then a no-op that returns its input.
Under ``torchrun`` the process group is started here (NCCL on CUDA, gloo on a CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """Where this process stands in a ``torchrun`` data-parallel job (one process when
    launched normally)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(tdist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def average_grads(self, params: object) -> None:
        """Average gradients over the processes by hand, for a model trained outside a
        DistributedDataParallel wrapper (the lip predictor's own stage)."""
        if self.world == 1:
            return
        import torch.distributed as tdist

        for p in params:  # type: ignore[attr-defined]
            if p.grad is not None:
                tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
                p.grad /= self.world

    def max_values(self, values: list[float]) -> list[float]:
        """The largest of each value over the processes (one process: the values), so
        that every process plans from the same figures."""
        if self.world == 1:
            return values
        import torch.distributed as tdist

        t = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return [float(v) for v in t]

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any: all ranks must stop together, or the
        others would wait forever in the next gradient exchange."""
        if self.world == 1:
            return flag
        import torch.distributed as tdist

        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def largest(self, value: float) -> float:
        """The largest of ``value`` over the processes."""
        return self.max_values([value])[0]

    def seed(self, base: int) -> int:
        """A seed of this process's own (each draws its own batches)."""
        return base + 1000 * self.rank

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` as trained: itself (one process) or its DistributedDataParallel
        wrapper, which averages the gradients over the processes in ``backward``."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def place(self, device: torch.device) -> torch.device:
        """The process's own GPU of a CUDA job (its local rank); the device otherwise."""
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

