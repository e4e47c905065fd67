"""Where the model computes: resolving ``model.device`` and moving batches to it.

Only the one base model lives on the accelerator. Everything that leaves a client (the
trainable state, deltas, payloads) and everything on the server (aggregation, optimiser
steps, checkpoints) is on the CPU, so the wire format, the byte counts and resume do not
depend on where training ran.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedlm.config.schema import DEVICE_PATTERN
from fedlm.errors import ModelError


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` -> a device torch can use here.

    Raises:
        ModelError: a misspelt device, or a CUDA device torch does not see here.
    """
    if not DEVICE_PATTERN.fullmatch(spec):
        raise ModelError(f"device {spec!r} is not a device; use cpu, cuda, cuda:N (N = GPU index) or auto")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"model.device={spec!r} but torch {torch.__version__} sees no CUDA GPU; "
                "set model.device=cpu, or auto to use a GPU only where there is one"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"model.device={spec!r} but torch sees {torch.cuda.device_count()} CUDA GPU(s); "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The same named tensors on ``device`` (no copy where they are already there)."""
    return {k: v.to(device) for k, v in batch.items()}
