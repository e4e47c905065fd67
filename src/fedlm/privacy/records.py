"""What a DP run may log: the public round record, and the private one beside it.

Client-level DP protects the model (and epsilon's accounting of it), not the per-client
metrics of the round record: pre-clip norms, losses, example counts and the cohort itself
are raw functions of each client's data or of the secret sampling. Under client-level DP
fedlm therefore splits each round record:

* the **private** record (:class:`PrivateRounds`): the full record, appended to
  ``run_dir/private/rounds.jsonl`` (mode 0600);
* the **public** record (:func:`public_record`, what ``metrics.jsonl`` gets): the cohort
  list becomes its size, per-client metrics become their cohort mean (one entry,
  ``AGGREGATE``), and every client id anywhere else (rejections, SecAgg+ errors, norms by
  client) becomes ``HIDDEN`` or a count.

The means are aggregates, not DP releases: they are outside the accounted epsilon, and
docs/privacy.md says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from fedlm.privacy.sampling import append_private, dump_json, private_dir, write_private

AGGREGATE = "cohort_mean"  # the one entry of a public record's "clients"
HIDDEN = "hidden"  # what a client id becomes in a public record
ROUNDS_FILE = "rounds.jsonl"


def public_record(record: dict[str, Any], client_ids: Collection[str]) -> dict[str, Any]:
    """``record`` with the cohort, per-client metrics and client ids aggregated away.

    Args:
        record: a round record (``Simulation.finish_round`` plus capabilities' fields).
        client_ids: every client id of the federation (any of them is hidden wherever it appears).
    """
    ids = set(client_ids)
    out = {k: _scrub(v, ids) for k, v in record.items() if k not in ("cohort", "clients", "rejected")}
    out["cohort"] = []
    out["cohort_size"] = len(record.get("cohort") or [])
    clients = record.get("clients") or {}
    out["clients"] = {AGGREGATE: cohort_mean(clients.values())} if clients else {}
    out["rejected"] = [{"client_id": HIDDEN, **{k: x[k] for k in ("reason", "side") if k in x}}
                       for x in record.get("rejected") or []]
    return out


def cohort_mean(metrics: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The mean over clients of every finite numeric metric, plus ``clients`` (how many)."""
    sums: dict[str, list[float]] = {}
    n = 0
    for m in metrics:
        n += 1
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                sums.setdefault(k, []).append(float(v))
    return {**{k: sum(v) / len(v) for k, v in sorted(sums.items())}, "clients": n}


def _scrub(obj: Any, ids: set[str]) -> Any:
    """Client ids replaced by ``HIDDEN``; a dict keyed by client ids becomes one ``AGGREGATE`` entry (the mean)."""
    if isinstance(obj, dict):
        keys = set(map(str, obj))
        if keys and keys <= ids:  # e.g. validate's norms by client: one entry, their mean
            if all(isinstance(v, dict) for v in obj.values()):
                return {AGGREGATE: cohort_mean(obj.values())}
            values = [float(v) for v in obj.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            return {AGGREGATE: sum(values) / len(values)} if values else {}
        return {(HIDDEN if str(k) in ids else k): _scrub(v, ids) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, ids) for v in obj]
    if isinstance(obj, str):
        if obj in ids:
            return HIDDEN
        for cid in ids & _quoted(obj):  # ids quoted inside a message: 'c3' or "c3"
            obj = obj.replace(f"'{cid}'", f"'{HIDDEN}'").replace(f'"{cid}"', f'"{HIDDEN}"')
        return obj
    return obj


def _quoted(text: str) -> set[str]:
    parts = text.split("'")[1::2] + text.split('"')[1::2]
    return set(parts)


class PrivateRounds:
    """The full round records of a DP run, in ``run_dir/private/rounds.jsonl`` (mode 0600)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = private_dir(run_dir) / ROUNDS_FILE

    def append(self, record: dict[str, Any]) -> None:
        append_private(self.path, dump_json(record))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_after(self, round_id: int) -> None:
        """Drop records past ``round_id`` (a resumed run continues after its checkpoint)."""
        if self.path.is_file():
            kept = [r for r in self.read() if int(r.get("round", 0)) <= round_id]
            write_private(self.path, "".join(dump_json(r) for r in kept).encode())


def participants(run_dir: Path) -> list[str] | None:
    """Every client in a cohort of the private records, or None when the run has none."""
    path = Path(run_dir) / "private" / ROUNDS_FILE
    if not path.is_file():
        return None
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            seen.update(json.loads(line).get("cohort") or [])
    return sorted(seen)


__all__ = ["AGGREGATE", "HIDDEN", "ROUNDS_FILE", "PrivateRounds", "cohort_mean", "participants", "public_record"]
