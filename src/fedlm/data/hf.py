"""Read Hugging Face ``datasets`` tables: parquet, arrow, and ``save_to_disk`` folders.

The ``datasets`` library does the reading (``load_dataset("parquet" | "arrow", ...)`` and
``load_from_disk``), so every layout it writes is understood, nested columns included (a
``messages`` column of ``{role, content}`` structs comes back as a list of dicts). Rows
are located as ``file row i`` (0-based, as ``dataset[i]``) in error messages.

``datasets`` is imported on first use: runs on JSONL or the built-in data never load it.
Its prepared copies of parquet/arrow files go under fedlm's cache, not ``~/.cache``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlm.config.data import DataConfig
from fedlm.data.readers import Table
from fedlm.errors import DataError

SUFFIX = {"parquet": ".parquet", "arrow": ".arrow"}


def read_table_files(path: Path, cfg: DataConfig, bad: list[str], *, cache_dir: Path) -> list[Table]:
    """One table per ``.parquet``/``.arrow`` file: ``path`` itself, or the files under the folder ``path``."""
    suffix = SUFFIX[cfg.source]
    if path.is_file():
        files = [path]
    else:
        files = sorted(f for f in path.rglob(f"*{suffix}") if f.is_file())
        if not files:
            raise DataError(
                f"data.path {path} is a folder without {suffix} files; point data.path at a {cfg.source} file or "
                f"a folder of them{' (for a save_to_disk folder use data.source=hf_disk)' if cfg.source == 'arrow' else ''}"
            )
    return [read_table_file(f, cfg.source, cache_dir=cache_dir) for f in files]


def read_table_file(file: Path, kind: str, *, cache_dir: Path) -> Table:
    """Rows of one parquet or arrow file, read with ``datasets.load_dataset``."""
    datasets = hf_datasets()

    with quiet():
        try:
            ds = datasets.load_dataset(
                kind, data_files=[str(file)], split="train", cache_dir=str(cache_dir / "hf_datasets")
            )
        except Exception as exc:  # pyarrow and datasets raise many types for one unreadable file
            raise DataError(f"{file}: cannot be read as {kind} ({type(exc).__name__}: {exc}); check the file") from None
    return _table(ds, str(file))


def read_saved(path: Path, cfg: DataConfig) -> Table:
    """Rows of a dataset written by ``Dataset.save_to_disk`` (a ``DatasetDict``: split ``data.split``)."""
    datasets = hf_datasets()

    if not path.is_dir():
        raise DataError(
            f"data.path {path} is a file, but data.source=hf_disk expects the folder written by save_to_disk; "
            "for a .parquet or .arrow file use data.source=parquet or data.source=arrow"
        )
    with quiet():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise DataError(
                f"data.path {path} is not a folder written by save_to_disk (it has no dataset_info.json/state.json "
                "or dataset_dict.json); point at such a folder, or use data.source=parquet/arrow/folder"
            ) from None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise DataError(f"data.split={cfg.split!r} is not a split of {path}; its splits are {sorted(ds)}, set data.split")
        return _table(ds[cfg.split], f"{path}[{cfg.split}]")
    return _table(ds, str(path))


def hf_datasets() -> Any:
    """The ``datasets`` module, or a DataError saying how to install it."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"parquet, arrow and hf_disk sources need Hugging Face `datasets` ({exc}); pip install datasets") from None
    return datasets


def _table(ds: Any, name: str) -> Table:
    return Table(name, [(f"{name} row {i}", row) for i, row in enumerate(ds.to_list())], list(ds.column_names))


@contextmanager
def quiet() -> Iterator[None]:
    """Silence ``datasets``' progress bars and info logs for the block, then restore them."""
    import datasets
    from datasets.utils import logging as ds_logging

    was_disabled, level = datasets.are_progress_bars_disabled(), ds_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the env var HF_DATASETS_DISABLE_PROGRESS_BARS=0 wins, with a warning
        datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not was_disabled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                datasets.enable_progress_bars()


__all__ = ["hf_datasets", "quiet", "read_saved", "read_table_file", "read_table_files"]
