"""The store of round updates (``explain.keep_updates``): one safetensors file per round.

``RUN_DIR/explain/round_NNNN.safetensors`` holds the round's starting global tensors and
each accepted client delta, so contributions (and per-client probes) can be recomputed
after the run with any method.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedlm.stages import TensorDict

STORE_DIR = "explain"


def save_round(store: Path, round_: int, global_state: TensorDict, tensors: dict[str, TensorDict],
               weights: dict[str, float]) -> Path:
    """``store/round_NNNN.safetensors``: ``global/<name>`` and ``update/<i>/<name>`` tensors;
    the metadata maps ``i`` to the client id and holds the FedAvg weights."""
    store.mkdir(parents=True, exist_ok=True)
    ids = sorted(tensors)
    flat = {f"global/{k}": v.detach().contiguous().cpu() for k, v in global_state.items()}
    for i, cid in enumerate(ids):
        flat.update({f"update/{i}/{k}": v.detach().contiguous().cpu() for k, v in tensors[cid].items()})
    meta = {"round": str(round_), "clients": json.dumps(ids), "weights": json.dumps([weights[c] for c in ids])}
    path = store / f"round_{round_:04d}.safetensors"
    save_file(flat, str(path), metadata=meta)
    return path


def load_round(path: Path) -> tuple[int, TensorDict, dict[str, TensorDict], dict[str, float]]:
    """Inverse of ``save_round``: (round, global state, client -> delta, client -> weight)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    flat = load_file(str(path))
    ids = json.loads(meta["clients"])
    weights = dict(zip(ids, json.loads(meta["weights"]), strict=True))
    global_state = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("global/")}
    tensors: dict[str, TensorDict] = {cid: {} for cid in ids}
    for k, v in flat.items():
        if k.startswith("update/"):
            _, i, name = k.split("/", 2)
            tensors[ids[int(i)]][name] = v
    return int(meta["round"]), global_state, tensors, weights



__all__ = ["STORE_DIR", "load_round", "save_round"]
