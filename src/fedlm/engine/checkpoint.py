"""Round checkpoints: everything needed to continue a run exactly, in files that cannot run code.

A checkpoint is a folder ``round_NNNN/`` holding

* ``tensors.safetensors``: every tensor of the state (global trainable tensors, stage
  states, the clients' kept state), by reference key;
* ``state.json``: the rest of the state tree (:mod:`fedlm.engine.treefile`);
* ``records.jsonl``: the run's ``metrics.jsonl`` up to this round, so a deleted or
  truncated log is rebuilt on resume;
* ``MANIFEST.json``: the round, the config and data digests, and the SHA-256 and size of
  each file, written last.

It is written into a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint under a final name. On load the manifest (small JSON) is read
first: a checkpoint of another config or other data is refused before anything else is
deserialised; a damaged one (missing file, wrong size or hash, unreadable content) is
reported and the next older one is tried. Per-round randomness is derived from (seed,
round), so nothing else is needed for an identical resume.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedlm.digests import sha256_file
from fedlm.engine.treefile import decode, encode
from fedlm.errors import CheckpointError
from fedlm.stages import TensorDict

_NAME = re.compile(r"^round_(\d{4,})$")
_LEGACY = re.compile(r"^round_(\d+)\.pt$")
MANIFEST, TENSORS, STATE, RECORDS = "MANIFEST.json", "tensors.safetensors", "state.json", "records.jsonl"
_MAX_MANIFEST_BYTES = 1 << 16


@dataclass
class ServerState:
    """The whole state of a federation between rounds."""

    round: int
    global_state: TensorDict
    server_states: dict[str, Any] = field(default_factory=dict)
    client_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: the state, the records up to it, and what was skipped to find it."""

    state: ServerState
    records: list[dict[str, Any]]
    path: Path
    damaged: tuple[str, ...] = ()  # newer checkpoints that were unreadable, with why


def save_checkpoint(directory: Path, state: ServerState, *, config_digest: str, keep: int,
                    data_digest: str = "", records: list[dict[str, Any]] | None = None) -> Path:
    """Write ``round_NNNN/`` atomically and prune all but the newest ``keep``.

    Raises:
        CheckpointError: the disk is full or not writable (nothing of this round is left behind).
    """
    final = directory / f"round_{state.round:04d}"
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    tree, tensors = encode({"round": state.round, "global_state": state.global_state,
                            "server_states": state.server_states, "client_states": state.client_states,
                            "totals": state.totals})
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(tree), encoding="utf-8")
        (tmp / RECORDS).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records or []),
                                   encoding="utf-8")
        files = {name: _fingerprint(tmp / name) for name in (TENSORS, STATE, RECORDS)}
        manifest = {"format": 1, "round": state.round, "config_digest": config_digest, "data_digest": data_digest,
                    "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _fsync_folder(tmp)
        if final.exists():  # a round run again after a resume from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise CheckpointError(
            f"could not write the checkpoint of round {state.round} to {directory}: "
            + ("the disk is full; free space, then resume the run with --resume" if full else f"{exc.strerror or exc}")
        ) from None
    for _, old in _checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(directory: Path, *, config_digest: str, data_digest: str = "") -> Checkpoint:
    """The newest intact checkpoint in ``directory`` of this config and data.

    Raises:
        CheckpointError: none exists, every one is damaged, or the newest belongs to another
            experiment (another config, or data changed since).
    """
    found = _checkpoints(directory)
    if not found:
        legacy = [p.name for p in directory.iterdir() if _LEGACY.match(p.name)] if directory.is_dir() else []
        if legacy:
            raise CheckpointError(
                f"{directory} holds only {legacy[-1]}, a checkpoint of an older fedlm that stored it with pickle; "
                "fedlm no longer reads pickles (loading one can run code): start the run again"
            )
        raise CheckpointError(f"no checkpoint in {directory}; the run stopped before its first round finished")
    damaged: list[str] = []
    for _, path in reversed(found):
        try:
            manifest = _manifest(path)
        except CheckpointError as exc:
            damaged.append(f"{path.name}: {exc}")
            continue
        if manifest.get("config_digest") != config_digest:
            raise CheckpointError(
                f"{path} belongs to a different config; resume with the run's own config.yaml "
                "(only federation.rounds, output, model.device and deploy settings may change)"
            )
        if data_digest and manifest.get("data_digest") not in ("", data_digest):
            raise CheckpointError(
                f"the data changed since {path} was written (its digest differs); resume with the data the run "
                "started with, or start a new run"
            )
        try:
            return _read(path, manifest, damaged)
        except CheckpointError as exc:
            damaged.append(f"{path.name}: {exc}")
    raise CheckpointError(f"every checkpoint in {directory} is damaged ({'; '.join(damaged)}); start the run again")


def _read(path: Path, manifest: dict[str, Any], damaged: list[str]) -> Checkpoint:
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {TENSORS, STATE, RECORDS}:
        raise CheckpointError("its manifest lists the wrong files")
    for name, expected in files.items():
        if not (path / name).is_file() or _fingerprint(path / name) != expected:
            raise CheckpointError(f"{name} does not match its manifest (truncated or changed)")
    try:
        tensors = load_file(str(path / TENSORS))
        tree = json.loads((path / STATE).read_text(encoding="utf-8"))
        records = [json.loads(line) for line in (path / RECORDS).read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"unreadable ({type(exc).__name__})") from None
    blob = decode(tree, tensors)
    try:
        state = ServerState(round=int(blob["round"]), global_state=dict(blob["global_state"]),
                            server_states=dict(blob["server_states"]), client_states=dict(blob["client_states"]),
                            totals=dict(blob["totals"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"its state lacks {exc}") from None
    if state.round != manifest.get("round"):
        raise CheckpointError("its state and manifest disagree on the round")
    return Checkpoint(state=state, records=records, path=path, damaged=tuple(damaged))


def _manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError("no manifest (the write did not finish)")
    if file.stat().st_size > _MAX_MANIFEST_BYTES:
        raise CheckpointError("its manifest is too large to be one")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        raise CheckpointError("its manifest is not a fedlm checkpoint manifest")
    return manifest


def _fingerprint(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _fsync_folder(folder: Path) -> None:
    for p in folder.iterdir():
        with p.open("rb") as fh:
            os.fsync(fh.fileno())


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _NAME.match(p.name)))


__all__ = ["Checkpoint", "ServerState", "load_latest", "save_checkpoint"]
