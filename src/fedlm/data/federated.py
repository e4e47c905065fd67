"""Build the federated dataset: records -> clients -> token examples -> train/held-out."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedlm.config.data import DataConfig
from fedlm.data import partition as part
from fedlm.data.formats import FORMATS, Pair, resolve_format
from fedlm.data.formatting import Example
from fedlm.data.sources import CLIENT_KEY, Record, load_records
from fedlm.errors import DataError

log = logging.getLogger(__name__)
SHOWN_DROPS = 20  # clients named in the one-line warning; every one is logged at debug level


@dataclass
class ClientData:
    """One client's examples; they never leave the client."""

    train: list[Example]
    heldout: list[Example]
    labels: Counter = field(default_factory=Counter)
    chars: int = 0
    heldout_rows: list[Record] = field(default_factory=list)  # row formats: the rows behind `heldout`


@dataclass
class FederatedData:
    """All clients of a simulation, keyed by client id (sorted)."""

    clients: dict[str, ClientData]
    format: str
    dropped: dict[str, str] = field(default_factory=dict)  # client id -> why it was dropped (the setting)

    def ids(self) -> list[str]:
        return list(self.clients)

    def digest(self) -> str:
        """Identity of the data for resume: clients, sizes and every example's token ids.

        Examples that live on other machines (a deployed server's placeholders) count by
        their number only.
        """
        h = hashlib.sha256(self.format.encode())
        for cid, c in self.clients.items():
            h.update(f"\0{cid}\0{len(c.train)}\0{len(c.heldout)}".encode())
            for ex in (*c.train, *c.heldout):
                if ex is not None:
                    h.update(np.asarray(ex["input_ids"], dtype=np.int64).tobytes())
                    h.update(np.asarray(ex["labels"], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        """Sizes and non-IID measures for ``fedlm data inspect`` and the report."""
        sizes = np.array([len(c.train) for c in self.clients.values()])
        hists = {cid: c.labels for cid, c in self.clients.items() if c.labels}
        return {
            "clients": len(self.clients),
            "format": self.format,
            "train_examples": int(sizes.sum()),
            "heldout_examples": int(sum(len(c.heldout) for c in self.clients.values())),
            "size_min": int(sizes.min()),
            "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "size_gini": _gini(sizes),
            "label_tv": part.mean_total_variation(hists) if hists else None,
            "label_counts": {cid: dict(h) for cid, h in hists.items()},  # the report's label histogram
            "dropped_clients": len(self.dropped),
        }


RowsHook = Callable[[dict[str, list[Record]]], dict[str, list[Record]]]


def build_federated_data(cfg: DataConfig, tokenizer, *, cache_dir: Path, rows_hook: RowsHook | None = None) -> FederatedData:
    """Load, partition, format and split the configured data (pure in cfg.seed).

    Clients dropped for being too small (``data.min_client_chars``, or fewer than 2
    examples) are logged by name with the setting that drops them, and kept in
    ``FederatedData.dropped``.

    Args:
        rows_hook: rewrites each client's raw rows before formatting (the attack suite
            poisons malicious clients' rows here); gets and returns ``{client: rows}``.
    """
    records = load_records(cfg, cache_dir=cache_dir)
    fmt = resolve_format(cfg, records[0])
    parts = _partition(cfg, records)
    min_chars = cfg.min_chars(fmt)
    setting = f"data.min_client_chars={min_chars}" + ("" if cfg.min_client_chars is not None else f" (unset: the {fmt} default)")
    dropped: dict[str, str] = {}
    if min_chars:
        rows_format = FORMATS.create(fmt)
        sizes = {c: sum(rows_format.chars(records[i], cfg) for i in idx) for c, idx in parts.items()}
        small = {c: f"{n} characters, below {setting}" for c, n in sizes.items() if n < min_chars}
        _log_drops(small, total=len(parts), fix="lower data.min_client_chars to keep them")
        dropped.update(small)
        parts = {c: idx for c, idx in parts.items() if c not in small}
    if cfg.max_clients and len(parts) > cfg.max_clients:
        keep = np.random.default_rng(cfg.seed).choice(len(parts), size=cfg.max_clients, replace=False)
        ids = sorted(parts)
        log.info("data.max_clients=%d keeps a seeded choice of %d of %d clients", cfg.max_clients, cfg.max_clients, len(ids))
        parts = {ids[i]: parts[ids[i]] for i in sorted(keep)}
    if not parts:
        raise DataError(f"no client is left after {setting}; lower it")
    client_rows = {cid: [records[i] for i in idx] for cid, idx in sorted(parts.items())}
    if rows_hook is not None:
        client_rows = rows_hook(client_rows)
    clients: dict[str, ClientData] = {}
    few: dict[str, str] = {}
    for n, (cid, rows) in enumerate(client_rows.items()):
        one = build_client_data(cfg, rows, tokenizer, index=n, fmt=fmt)
        if one is None:
            few[cid] = f"fewer than 2 examples from {len(rows)} row(s) at data.seq_len={cfg.seq_len}"
        else:
            clients[cid] = one
    _log_drops(few, total=len(client_rows), fix="a client needs one example to train on and one to hold out")
    dropped.update(few)
    if not clients:
        raise DataError("every client has fewer than 2 examples; lower data.seq_len or use fewer, larger clients")
    return FederatedData(clients, fmt, dropped)


def build_client_data(
    cfg: DataConfig, rows: list[Record], tokenizer, *, index: int, fmt: str | None = None
) -> ClientData | None:
    """One client's examples from its raw rows (None when it has fewer than 2).

    ``index`` is the client's position among the partitioned clients: it seeds the
    train/held-out split, so a deployed client that holds only its own rows splits them
    exactly as the simulator does. Rows are checked against the format first (a
    deployed client's file is read here, not by :func:`load_records`).

    Raises:
        DataError: a row is malformed (names its position and the fix).
    """
    if not rows:
        return None
    fmt = fmt or resolve_format(cfg, rows[0])
    rows_format = FORMATS.create(fmt)
    for i, row in enumerate(rows):
        problem = rows_format.check(row, cfg) if isinstance(row, dict) else f"expected an object, got {type(row).__name__}"
        if problem is not None:
            raise DataError(f"row {i} of the client's data: {problem}")
    pairs: list[Pair] = rows_format.examples(rows, cfg, tokenizer)  # (row or None, example)
    if len(pairs) < 2:
        return None  # a client needs one example to train on and one to hold out
    rng = np.random.default_rng([cfg.seed, index])
    order = rng.permutation(len(pairs))
    n_held = max(1, round(len(pairs) * cfg.heldout_fraction))
    held = [pairs[i] for i in sorted(order[:n_held])]
    # The cap keeps a seeded sample of the client's rows, not its first ones: sources such
    # as MedQuAD's are ordered by topic, and the held-out share is drawn from every topic.
    kept = order[n_held:][: cfg.max_examples_per_client or None]
    train = [pairs[i][1] for i in sorted(kept)]
    labels = Counter(r.get(cfg.label_field, "") for r in rows) if cfg.label_field else Counter()
    chars = sum(rows_format.chars(r, cfg) for r in rows)
    return ClientData(train, [ex for _, ex in held], labels, chars, [r for r, _ in held if r is not None])


def _resolve_format(cfg: DataConfig, first: Record) -> str:
    """The format of ``cfg`` for rows like ``first`` (kept for the deployment's client node)."""
    return resolve_format(cfg, first)


def _log_drops(dropped: dict[str, str], *, total: int, fix: str) -> None:
    if not dropped:
        return
    for cid, why in dropped.items():
        log.debug("dropped client %s: %s", cid, why)
    shown = "; ".join(f"{cid} ({why})" for cid, why in list(dropped.items())[:SHOWN_DROPS])
    more = f"; ... and {len(dropped) - SHOWN_DROPS} more" if len(dropped) > SHOWN_DROPS else ""
    log.warning("dropped %d of %d clients: %s%s; %s", len(dropped), total, shown, more, fix)


def _partition(cfg: DataConfig, records: list[Record]) -> dict[str, list[int]]:
    n = len(records)
    if cfg.partition == "natural":
        key = cfg.client_field
        keys = [r.get(CLIENT_KEY) or (r.get(key, "") if key else "all") for r in records]
        return part.natural(keys)
    k = cfg.num_clients or 1
    if cfg.partition == "iid":
        return part.iid(n, k, seed=cfg.seed)
    if cfg.partition == "quantity":
        return part.quantity_skew(n, k, alpha=cfg.quantity_alpha, seed=cfg.seed)
    labels = [str(r.get(cfg.label_field or "", "")) for r in records]
    if all(lab == "" for lab in labels):
        raise DataError(f"data.label_field {cfg.label_field!r} is absent from the records; name an existing field")
    if cfg.partition == "pathological":
        return part.pathological(labels, k, classes_per_client=cfg.classes_per_client, seed=cfg.seed)
    if cfg.partition == "shard":
        return part.shard(labels, k, shards_per_client=cfg.shards_per_client, seed=cfg.seed)
    return part.dirichlet(labels, k, alpha=cfg.dirichlet_alpha, seed=cfg.seed)


def _gini(sizes: np.ndarray) -> float:
    """Gini coefficient of client sizes: 0 equal, towards 1 concentrated."""
    if sizes.sum() == 0:
        return 0.0
    s = np.sort(sizes.astype(float))
    n = len(s)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(s) / (n * s.sum())) if n > 1 else 0.0


__all__ = ["ClientData", "FederatedData", "RowsHook", "build_client_data", "build_federated_data"]
