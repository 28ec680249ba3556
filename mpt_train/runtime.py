"""Where a run computes: device, numeric precision and the torchrun process group, resolved once.

Every command and task takes its device from here, so "auto" means the same thing everywhere
(CUDA when present, else the CPU) and an impossible request (``cuda`` without a GPU, half
precision on the CPU) fails before any data is read. A training run resolves one
:class:`Runtime` (joining the process group torchrun describes, if any); inference needs only
:func:`choose_device`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mpt_data.console import PRECISIONS  # the CLIs' choices, kept where --help finds them without torch


class DeviceError(RuntimeError):
    """A device or precision this machine cannot run (the message says which option to change)."""


def choose_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA when available, else the CPU; "cpu", "cuda", "cuda:N" as given.

    Raises DeviceError for a CUDA device on a machine without one.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu "
                          "or auto")
    return device


def choose_precision(name: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA, fp32 on the CPU; bf16 / fp16 / fp32 as given (the CPU path is fp32 only)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise DeviceError(f"precision {name!r}: use auto, bf16, fp16 or fp32")
    if device.type == "cpu" and name != "fp32":
        raise DeviceError("the CPU path trains in fp32; use --precision fp32 or auto")
    return name


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; nothing on CPU (fp32) or for precision "fp32"."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype inputs are synthesised in: bf16 / fp16 under autocast, else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


@dataclass(frozen=True)
class Runtime:
    """One run's device (this rank's GPU under torchrun), precision and place in the process group."""

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @staticmethod
    def start(device: str = "auto", precision: str = "auto") -> "Runtime":
        """Resolve ``device`` and ``precision`` and join the process group torchrun describes
        (RANK, WORLD_SIZE, LOCAL_RANK; NCCL on CUDA, gloo on the CPU); one process otherwise.

        A process group already initialised (by torchrun tooling or an earlier call) is reused.
        """
        kind = choose_device(device).type
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = 0, 0
        if world > 1:
            rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
            if not dist.is_initialized():
                if kind == "cuda":
                    torch.cuda.set_device(local)
                dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        dev = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
        return Runtime(device=dev, precision=choose_precision(precision, dev), rank=rank, world_size=max(world, 1),
                       local_rank=local)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
