"""Runtimes: the in-process simulator, checkpoints, and the experiment driver."""

from fedlm.runtime.checkpoint import ServerState, load_latest, save_checkpoint
from fedlm.runtime.simulation import Simulation, derive_seed

__all__ = ["ServerState", "Simulation", "derive_seed", "load_latest", "save_checkpoint"]
