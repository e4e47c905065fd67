"""A node's files on its own disk, in a format that cannot run code, with a checksum, mode 0600.

A deployed client keeps its prepared examples and its state after each round (personal
tensors, optimizer moments, SCAFFOLD's control variate) between messages. Each is one
file::

    b"FEDLMNS1" | sha256(body) (32 bytes) | body
    body = len(header) (8 bytes, little endian) | header (JSON) | tensors (safetensors)

The header holds ``{"format": 1, "kind": ..., "tree": ...}``, the state tree with every
tensor replaced by a reference into the safetensors part (:mod:`fedlm.engine.treefile`).
Neither part can run code when read, unlike pickle. :func:`read_tree` checks the magic,
the length, the checksum, then parses; anything wrong raises
:class:`~fedlm.errors.CheckpointError` naming the file, so a damaged file is never half
read. :func:`write_private` writes through a 0600 temporary file and a rename, so a
crash leaves the old file or the new one, never a torn one, whatever the umask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

from fedlm.errors import CheckpointError
from fedlm.privacy.secagg.state import write_private

log = logging.getLogger(__name__)

MAGIC = b"FEDLMNS1"
FORMAT = 1
_HEAD = len(MAGIC) + 32


def tree_bytes(tree: Any, *, kind: str) -> bytes:
    """``tree`` (dicts, lists, tuples, tensors, arrays, numbers, strings, bytes) as one file's bytes."""
    from safetensors.torch import save as st_save

    from fedlm.engine.treefile import encode

    try:
        encoded, tensors = encode(tree)
        header = json.dumps({"format": FORMAT, "kind": kind, "tree": encoded}, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot store this {kind} on the node ({exc})") from None
    body = struct.pack("<Q", len(header)) + header + st_save(tensors)
    return MAGIC + hashlib.sha256(body).digest() + body


def tree_from_bytes(data: bytes, *, kind: str, source: str = "a node state file") -> Any:
    """Inverse of :func:`tree_bytes`.

    Raises:
        CheckpointError: wrong magic, checksum, length, kind or format, or unreadable parts.
    """
    if len(data) < _HEAD + 8 or data[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{source} is not a fedlm node state file (wrong magic or too short)")
    body = memoryview(data)[_HEAD:]
    if hashlib.sha256(body).digest() != data[len(MAGIC):_HEAD]:
        raise CheckpointError(f"{source} is damaged (its checksum does not match)")
    (n,) = struct.unpack("<Q", body[:8])
    if n > len(body) - 8:
        raise CheckpointError(f"{source} is damaged (a {n}-byte header in {len(body) - 8} bytes)")
    try:
        from safetensors.torch import load as st_load

        from fedlm.engine.treefile import decode

        header = json.loads(bytes(body[8:8 + n]).decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("kind") != kind:
            raise CheckpointError(f"{source} holds no {kind} of format {FORMAT}")
        return decode(header.get("tree"), dict(st_load(bytes(body[8 + n:]))))
    except CheckpointError:
        raise
    except Exception as exc:  # a checksum-valid file we did not write, or a library's refusal
        raise CheckpointError(f"{source} is unreadable ({type(exc).__name__}: {str(exc)[:160]})") from None


def write_tree(path: Path, tree: Any, *, kind: str) -> None:
    """Store ``tree`` at ``path`` (mode 0600, atomically)."""
    write_private(path, tree_bytes(tree, kind=kind))


def read_tree(path: Path, *, kind: str) -> Any:
    """The tree at ``path``; raises :class:`CheckpointError` when it is missing or damaged."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror})") from None
    return tree_from_bytes(data, kind=kind, source=str(path))


def write_json(path: Path, obj: Any) -> None:
    """A small JSON file (a progress marker), mode 0600, atomically."""
    write_private(path, json.dumps(obj, sort_keys=True).encode())


def forget_pickles(folder: Path) -> None:
    """Remove an older fedlm's pickled files from a state directory: they are never read."""
    for old in [*folder.glob("examples-*.pkl"), *folder.glob("client_state-r*.pkl")]:
        log.warning("removing %s: an older fedlm pickled it, and this one never unpickles", old)
        old.unlink(missing_ok=True)


__all__ = ["MAGIC", "forget_pickles", "read_tree", "tree_bytes", "tree_from_bytes", "write_json", "write_tree"]
