"""Build the federated dataset: records -> clients -> token examples -> train/held-out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedlm.config.schema import DataConfig
from fedlm.data import partition as part
from fedlm.data.formatting import Example, chunk_lm, format_instruction
from fedlm.data.sources import CLIENT_KEY, Record, load_records
from fedlm.errors import DataError


@dataclass
class ClientData:
    """One client's examples; they never leave the client."""

    train: list[Example]
    heldout: list[Example]
    labels: Counter = field(default_factory=Counter)
    chars: int = 0
    heldout_rows: list[Record] = field(default_factory=list)  # instruction format: rows behind `heldout`


@dataclass
class FederatedData:
    """All clients of a simulation, keyed by client id (sorted)."""

    clients: dict[str, ClientData]
    format: str

    def ids(self) -> list[str]:
        return list(self.clients)

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
        }


RowsHook = Callable[[dict[str, list[Record]]], dict[str, list[Record]]]


def build_federated_data(cfg: DataConfig, tokenizer, *, cache_dir: Path, rows_hook: RowsHook | None = None) -> FederatedData:
    """Load, partition, format and split the configured data (pure in cfg.seed).

    Args:
        rows_hook: rewrites each client's raw rows before formatting (the attack suite
            poisons malicious clients' rows here); gets and returns ``{client: rows}``.
    """
    records = load_records(cfg, cache_dir=cache_dir)
    fmt = _resolve_format(cfg, records[0])
    parts = _partition(cfg, records)
    if cfg.min_client_chars:
        parts = {c: idx for c, idx in parts.items() if _chars([records[i] for i in idx], cfg, fmt) >= cfg.min_client_chars}
    if cfg.max_clients and len(parts) > cfg.max_clients:
        keep = np.random.default_rng(cfg.seed).choice(len(parts), size=cfg.max_clients, replace=False)
        ids = sorted(parts)
        parts = {ids[i]: parts[ids[i]] for i in sorted(keep)}
    if not parts:
        raise DataError("no client is left after data.min_client_chars; lower it")
    client_rows = {cid: [records[i] for i in idx] for cid, idx in sorted(parts.items())}
    if rows_hook is not None:
        client_rows = rows_hook(client_rows)
    clients: dict[str, ClientData] = {}
    for n, (cid, rows) in enumerate(client_rows.items()):
        one = build_client_data(cfg, rows, tokenizer, index=n, fmt=fmt)
        if one is not None:
            clients[cid] = one
    if not clients:
        raise DataError("every client has fewer than 2 examples; lower data.seq_len or use fewer, larger clients")
    return FederatedData(clients, fmt)


def build_client_data(
    cfg: DataConfig, rows: list[Record], tokenizer, *, index: int, fmt: str | None = None
) -> ClientData | None:
    """One client's examples from its raw rows (None when it has fewer than 2).

    ``index`` is the client's position among the partitioned clients: it seeds the
    train/held-out split, so a deployed client that holds only its own rows splits them
    exactly as the simulator does.
    """
    if not rows:
        return None
    fmt = fmt or _resolve_format(cfg, rows[0])
    pairs = _format(rows, cfg, fmt, tokenizer)  # (row or None, example)
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
    return ClientData(
        train, [ex for _, ex in held], labels, _chars(rows, cfg, fmt), [r for r, _ in held if r is not None]
    )


def _resolve_format(cfg: DataConfig, first: Record) -> str:
    if cfg.format != "auto":
        return cfg.format
    return "instruction" if cfg.prompt_field in first and cfg.response_field in first else "lm"


def _partition(cfg: DataConfig, records: list[Record]) -> dict[str, list[int]]:
    n = len(records)
    if cfg.partition == "natural":
        key = cfg.client_field
        keys = [r.get(CLIENT_KEY) or (r.get(key, "") if key else "all") for r in records]
        return part.natural(keys)
    if cfg.partition == "iid":
        return part.iid(n, cfg.num_clients or 1, seed=cfg.seed)
    if cfg.partition == "quantity":
        return part.quantity_skew(n, cfg.num_clients or 1, alpha=cfg.quantity_alpha, seed=cfg.seed)
    labels = [r.get(cfg.label_field or "", "") for r in records]
    if all(lab == "" for lab in labels):
        raise DataError(f"data.label_field {cfg.label_field!r} is absent from the records; name an existing field")
    if cfg.partition == "pathological":
        return part.pathological(labels, cfg.num_clients or 1, classes_per_client=cfg.classes_per_client, seed=cfg.seed)
    return part.dirichlet(labels, cfg.num_clients or 1, alpha=cfg.dirichlet_alpha, seed=cfg.seed)


def _format(rows: list[Record], cfg: DataConfig, fmt: str, tokenizer) -> list[tuple[Record | None, Example]]:
    """Examples paired with the row they came from (None for LM chunks, which span rows)."""
    if fmt == "lm":
        return [(None, ex) for ex in chunk_lm([r[cfg.text_field] for r in rows], tokenizer, seq_len=cfg.seq_len)]
    out = []
    for r in rows:
        ctx = r.get(cfg.context_field, "") if cfg.context_field else ""
        ex = format_instruction(r[cfg.prompt_field], r[cfg.response_field], tokenizer, seq_len=cfg.seq_len, context=ctx)
        if ex is not None:
            out.append((r, ex))
    return out


def _chars(rows: list[Record], cfg: DataConfig, fmt: str) -> int:
    if fmt == "lm":
        return sum(len(r.get(cfg.text_field, "")) for r in rows)
    return sum(len(r.get(cfg.prompt_field, "")) + len(r.get(cfg.response_field, "")) for r in rows)


def _gini(sizes: np.ndarray) -> float:
    """Gini coefficient of client sizes: 0 equal, towards 1 concentrated."""
    if sizes.sum() == 0:
        return 0.0
    s = np.sort(sizes.astype(float))
    n = len(s)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(s) / (n * s.sum())) if n > 1 else 0.0


__all__ = ["ClientData", "FederatedData", "build_federated_data"]
