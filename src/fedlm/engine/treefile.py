"""State trees on disk in formats that cannot run code: safetensors for tensors, JSON for the rest.

A run's state is a tree of dicts, lists and tuples whose leaves are tensors, numbers,
strings, bytes and None (stage states, client states, optimiser moments, ledgers).
``encode`` splits it into a JSON-able tree, where each tensor is replaced by a reference
``{"__tensor__": key}``, and a flat dict of tensors for one safetensors file; ``decode``
rebuilds it exactly: tuples stay tuples, integer dict keys (an optimiser's parameter ids)
stay integers, numpy arrays come back as numpy arrays. Neither format can run code when
read (a pickle-based file could).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedlm.errors import CheckpointError

_TENSOR, _ARRAY, _TUPLE, _DICT, _BYTES = "__tensor__", "__ndarray__", "__tuple__", "__dict__", "__bytes__"
_MARKERS = frozenset({_TENSOR, _ARRAY, _TUPLE, _DICT, _BYTES})


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``tree`` as (JSON-able tree, tensors by key)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def put(t: torch.Tensor) -> str:
        key = f"t{len(tensors)}"
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
        return key

    def enc(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return {_TENSOR: put(v)}
        if isinstance(v, np.ndarray):
            return {_ARRAY: put(torch.from_numpy(np.ascontiguousarray(v)))}
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, bytes):
            return {_BYTES: v.hex()}
        if isinstance(v, tuple):
            return {_TUPLE: [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in v):
                return {k: enc(x) for k, x in v.items()}
            return {_DICT: [[enc(k), enc(x)] for k, x in v.items()]}
        raise CheckpointError(f"cannot write a {type(v).__name__} into a checkpoint; state must be tensors, "
                              "numbers, strings, bytes, lists, tuples and dicts")

    return enc(tree), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`.

    Raises:
        CheckpointError: a reference to a missing tensor, or a malformed marker.
    """

    def tensor(key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in tensors:
            raise CheckpointError(f"the state refers to a tensor {str(key)[:40]!r} its tensor file lacks")
        return tensors[key]

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1 and next(iter(v)) in _MARKERS:
            (marker, inner), = v.items()
            if marker == _TENSOR:
                return tensor(inner)
            if marker == _ARRAY:
                return tensor(inner).numpy()
            if marker == _TUPLE and isinstance(inner, list):
                return tuple(dec(x) for x in inner)
            if marker == _BYTES and isinstance(inner, str):
                return bytes.fromhex(inner)
            if marker == _DICT and isinstance(inner, list) and all(isinstance(p, list) and len(p) == 2 for p in inner):
                return {_hashable(dec(k)): dec(x) for k, x in inner}
            raise CheckpointError(f"malformed {marker} entry in a checkpoint's state")
        return {k: dec(x) for k, x in v.items()}

    try:
        return dec(tree)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"malformed checkpoint state ({exc})") from None


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise CheckpointError("a checkpoint's dict key is a list or dict")
    return key


__all__ = ["decode", "encode"]
