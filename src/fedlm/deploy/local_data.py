"""Split a config's data into one file per client, as each organisation would hold it.

``fedlm deploy local`` and the Flower-simulation app give every node the rows the
simulator would give that client: the partition of ``config.data`` (with the same
seeds, filters and client selection), written as ``client-<i>.jsonl`` plus a manifest
``clients.json`` of ``{client_id, file, client_index}`` in sorted client order. The
``client_index`` is the client's position in the partition, which seeds its
train/held-out split; with it a node formats its rows exactly as the simulator does.

Each client also gets a long-term SecAgg+ identity key (``client-<i>.identity``, raw
Ed25519, mode 0600) and the folder an enrolment map ``enrolment.json`` (client id -> the
key's public half, hex): what an organisation would enrol with the federation out of band,
so that a node can check its neighbours' signed keys without trusting the server.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import ConfigError

MANIFEST = "clients.json"
ENROLMENT = "enrolment.json"


@dataclass(frozen=True)
class ClientFile:
    client_id: str
    file: str  # absolute path
    client_index: int
    identity: str = ""  # absolute path of the client's SecAgg+ identity key


def write_identities(folder: Path, client_ids: list[str]) -> tuple[dict[str, Path], Path]:
    """A fresh identity key per client (mode 0600) and the enrolment map of their public halves."""
    from fedlm.privacy.secagg.identity import generate_identity, public_bytes
    from fedlm.privacy.secagg.state import write_private

    keys, public = {}, {}
    for i, cid in enumerate(client_ids):
        key = generate_identity()
        keys[cid] = folder / f"client-{i}.identity"
        write_private(keys[cid], key.private_bytes_raw())
        public[cid] = public_bytes(key).hex()
    (folder / ENROLMENT).write_text(json.dumps(public, indent=1, sort_keys=True), encoding="utf-8")
    return keys, folder / ENROLMENT


def read_enrolment(path: Path) -> dict[str, bytes]:
    """The enrolment map (client id -> identity public key) from its JSON file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {str(cid): bytes.fromhex(str(key)) for cid, key in dict(raw).items()}
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"the enrolment map {path} is unreadable ({exc}); write it with fedlm deploy local") from None


def write_client_files(config: ExperimentConfig, folder: Path) -> list[ClientFile]:
    """One JSONL per client that keeps at least 2 examples; returns the manifest."""
    from fedlm.data.federated import build_federated_data
    from fedlm.models.loading import cache_dir, load_tokenizer

    captured: dict[str, list] = {}

    def capture(rows: dict[str, list]) -> dict[str, list]:
        captured.update(rows)
        return rows

    data = build_federated_data(config.data, load_tokenizer(config.model.name), cache_dir=cache_dir(), rows_hook=capture)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, (cid, rows) in enumerate(captured.items()):
        if cid not in data.clients:
            continue  # fewer than 2 examples: the simulator drops it too
        path = folder / f"client-{len(out)}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        out.append(ClientFile(cid, str(path.resolve()), index))
    keys, _ = write_identities(folder, [c.client_id for c in out])
    out = [ClientFile(c.client_id, c.file, c.client_index, str(keys[c.client_id].resolve())) for c in out]
    (folder / MANIFEST).write_text(json.dumps([asdict(c) for c in out], indent=1), encoding="utf-8")
    return out


def read_manifest(folder: Path) -> list[ClientFile]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write it with `fedlm deploy app --data` or `fedlm deploy local`")
    return [ClientFile(**c) for c in json.loads(path.read_text(encoding="utf-8"))]


__all__ = ["ENROLMENT", "MANIFEST", "ClientFile", "read_enrolment", "read_manifest", "write_client_files",
           "write_identities"]
