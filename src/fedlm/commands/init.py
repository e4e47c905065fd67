"""``fedlm init NAME [DIR]``: copy a packaged example config out to edit.

The examples ship inside the package (``fedlm run -c dp`` runs one as is). To change one,
copy it: its relative paths are taken from its own folder, so a file it reads beside it
(the deploy example's text) is copied along, and ``${FEDLM_DATA}`` paths keep working.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedlm.config.loader import EXAMPLES_DIR, PATH_FIELDS, example_names, read_yaml
from fedlm.errors import ConfigError


def describe_examples() -> dict[str, str]:
    """Each packaged example's name and the first line of its header comment."""
    out = {}
    for name in example_names():
        first = next((line.lstrip("# ").strip() for line in (EXAMPLES_DIR / f"{name}.yaml").read_text(
            encoding="utf-8").splitlines() if line.startswith("#")), "")
        out[name] = first
    return out


def init_example(name: str, target: str | Path = ".", *, force: bool = False) -> list[Path]:
    """Copy example ``name`` to ``target`` (a folder, or a ``.yaml`` file name); returns the files written.

    Raises:
        ConfigError: no such example, ``target`` is a file where a folder is expected, or the
            config file exists already (pass ``force`` to overwrite it).
    """
    stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    source = EXAMPLES_DIR / f"{stem}.yaml"
    if not source.is_file():
        raise ConfigError(f"no packaged example {name!r}; choose from {', '.join(example_names())}")
    target = Path(target).expanduser()
    if target.suffix in (".yaml", ".yml") and not target.is_dir():
        folder, dest = target.parent, target
    else:
        folder, dest = target, target / source.name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give a folder (or a new .yaml file name) to copy {stem}.yaml to")
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; pass --force to overwrite it, or give another DIR")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    written = [dest]
    for rel in _beside(source):  # files the example reads from its own folder
        copy = folder / rel
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLES_DIR / rel, copy)
            written.append(copy)
    return written


def _beside(config_file: Path) -> list[Path]:
    """Relative paths in ``config_file`` that name files shipped beside it."""
    raw = read_yaml(config_file)
    found = []
    for field in PATH_FIELDS:
        section, key = field.split(".")
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if (isinstance(value, str) and "${" not in value and not Path(value).is_absolute()
                and (config_file.parent / value).is_file()):
            found.append(Path(value))
    return found


__all__ = ["describe_examples", "init_example"]
