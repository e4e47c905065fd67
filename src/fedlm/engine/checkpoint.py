"""Round checkpoints: everything needed to continue a run exactly.

A checkpoint is one ``torch.save`` file per round (written to a temporary name, then
renamed, so a crash never leaves a half-written checkpoint), holding the global
trainable tensors, every stage state and the round counter. Per-round randomness is
derived from (seed, round), so nothing else is needed for an identical resume.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedlm.errors import CheckpointError
from fedlm.stages import TensorDict

_NAME = re.compile(r"round_(\d+)\.pt$")


@dataclass
class ServerState:
    """The whole state of a federation between rounds."""

    round: int
    global_state: TensorDict
    server_states: dict[str, Any] = field(default_factory=dict)
    client_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: Path, state: ServerState, *, config_digest: str, keep: int) -> Path:
    """Write ``round_NNNN.pt`` atomically and prune all but the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round_{state.round:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"digest": config_digest, **state.__dict__}, tmp)
    os.replace(tmp, path)
    for old in sorted(_checkpoints(directory))[:-keep]:
        old[1].unlink(missing_ok=True)
    return path


def load_latest(directory: Path, *, config_digest: str) -> ServerState:
    """The newest checkpoint in ``directory``.

    Raises:
        CheckpointError: none exists, or it was written by a different experiment.
    """
    found = sorted(_checkpoints(directory))
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}; the run stopped before its first round finished")
    blob = torch.load(found[-1][1], weights_only=False, map_location="cpu")
    if blob.pop("digest") != config_digest:
        raise CheckpointError(
            f"{found[-1][1]} belongs to a different config; resume with the run's own config.yaml "
            "(only federation.rounds and output settings may change)"
        )
    return ServerState(**blob)


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.search(p.name))]
