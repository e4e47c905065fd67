"""Load an experiment config from YAML plus dotted ``--set`` overrides.

Errors name the key (with the nearest valid one for typos), the value and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build the experiment config.

    Args:
        path: a YAML file, or None for the built-in default.
        overrides: ``"a.b=c"`` strings applied in order; values parse as YAML scalars.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or invalid value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist; pass an existing YAML file with -c")
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping of sections (model:, data:, ...), got {type(loaded).__name__}")
        raw = loaded or {}
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw)


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
