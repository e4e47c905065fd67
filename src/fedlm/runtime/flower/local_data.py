"""Split a config's data into one file per client, as each organisation would hold it.

``fedlm deploy local`` and the Flower-simulation app give every node the rows the
simulator would give that client: the partition of ``config.data`` (with the same
seeds, filters and client selection), written as ``client-<i>.jsonl`` plus a manifest
``clients.json`` of ``{client_id, file, client_index}`` in sorted client order. The
``client_index`` is the client's position in the partition, which seeds its
train/held-out split; with it a node formats its rows exactly as the simulator does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import ConfigError

MANIFEST = "clients.json"


@dataclass(frozen=True)
class ClientFile:
    client_id: str
    file: str  # absolute path
    client_index: int


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
    (folder / MANIFEST).write_text(json.dumps([asdict(c) for c in out], indent=1), encoding="utf-8")
    return out


def read_manifest(folder: Path) -> list[ClientFile]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write it with `fedlm deploy app --data` or `fedlm deploy local`")
    return [ClientFile(**c) for c in json.loads(path.read_text(encoding="utf-8"))]


__all__ = ["MANIFEST", "ClientFile", "read_manifest", "write_client_files"]
