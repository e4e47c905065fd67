"""Runtimes: the in-process simulator, checkpoints, and the experiment driver.

The names below load on first use, so a light submodule (a deployed node's protocol
steps) does not pay for importing the simulator and its model stack.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ServerState": "fedlm.runtime.checkpoint",
    "load_latest": "fedlm.runtime.checkpoint",
    "save_checkpoint": "fedlm.runtime.checkpoint",
    "Simulation": "fedlm.runtime.simulation",
    "derive_seed": "fedlm.runtime.simulation",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedlm.runtime' has no attribute {name!r}")


__all__ = ["ServerState", "Simulation", "derive_seed", "load_latest", "save_checkpoint"]
