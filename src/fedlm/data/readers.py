"""Parse text files into raw rows: JSONL, a JSON array, CSV and plain text.

A reader returns a :class:`Table`: each raw row with where it came from (``file:line``,
or ``file:[index]`` in a JSON array), and the columns when the file declares them (a CSV
header). Rows are checked against the data format by :mod:`fedlm.data.sources`; a line
that does not even parse is reported here, in ``bad``.

Files are decoded strictly with ``data.encoding`` (UTF-8 by default, a UTF-8 byte-order
mark is dropped): a byte that does not decode stops the run with the file, line and byte
offset, rather than turning silently into U+FFFD.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedlm.config.data import DataConfig
from fedlm.errors import DataError


@dataclass
class Table:
    """Raw rows of one file, each with its location, and the declared columns if any."""

    name: str  # the file (or saved dataset) the rows come from
    rows: list[tuple[str, object]] = field(default_factory=list)
    columns: list[str] | None = None


def read_text(path: Path, cfg: DataConfig) -> str:
    """The whole file decoded with ``data.encoding``.

    Raises:
        DataError: a byte sequence is not valid in that encoding (names file, line,
            byte offset and the fix).
    """
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8) and codecs.lookup(cfg.encoding).name == "utf-8":
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode(cfg.encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: byte 0x{raw[exc.start]:02x} at offset {exc.start} (column {column}) is not valid "
            f"{cfg.encoding} ({exc.reason}); re-save the file as UTF-8, or set data.encoding to the file's "
            "encoding (e.g. data.encoding=latin-1 or cp1252)"
        ) from None


def read_jsonl(path: Path, cfg: DataConfig, bad: list[str]) -> Table:
    """One JSON value per line; blank lines are skipped."""
    table = Table(str(path))
    for lineno, line in enumerate(read_text(path, cfg).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            table.rows.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            bad.append(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    return table


def read_json_array(path: Path, cfg: DataConfig, bad: list[str]) -> Table:
    """A JSON array of objects (the FedIT/Dolly client files)."""
    try:
        rows = json.loads(read_text(path, cfg))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    if not isinstance(rows, list):
        raise DataError(
            f"{path}: expected a JSON array of objects, got {type(rows).__name__}; "
            "for one object per line use data.source=jsonl"
        )
    return Table(str(path), [(f"{path}:[{i}]", row) for i, row in enumerate(rows)])


def read_csv(path: Path, cfg: DataConfig, bad: list[str]) -> Table:
    """A CSV file whose separator (``,``, ``;`` or tab) is sniffed from its start."""
    text = read_text(path, cfg)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    columns = list(reader.fieldnames or [])
    table = Table(f"{path}:1", columns=columns)
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:  # more cells than header columns
            bad.append(f"{where}: {len(row) - 1 + len(row[None])} cells for {len(columns)} columns")
            continue
        table.rows.append((where, row))
    return table


def read_plain(path: Path, cfg: DataConfig, bad: list[str]) -> Table:
    """Plain text: each paragraph (blank-line separated) is a row of ``data.text_field``.

    Paragraphs are the rows so that iid/quantity partitions split on sensible boundaries.
    """
    text = read_text(path, cfg)
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return Table(str(path), [(f"{path}:[{i}]", {cfg.text_field: p}) for i, p in enumerate(paragraphs)])


__all__ = ["Table", "read_csv", "read_json_array", "read_jsonl", "read_plain", "read_text"]
