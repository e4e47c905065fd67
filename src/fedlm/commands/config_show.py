"""``fedlm config show``: every config field with its current value, its default and its doc.

Read from the pydantic schema itself, so the listing cannot drift from what the loader
accepts: a new field appears here the moment it is declared, with its description.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fedlm.config.schema import ExperimentConfig


@dataclass(frozen=True)
class FieldRow:
    """One field: dotted key, current and default values (as YAML would show them) and its doc."""

    key: str
    value: str
    default: str
    doc: str

    @property
    def changed(self) -> bool:
        return self.value != self.default


def field_rows(config: ExperimentConfig) -> list[FieldRow]:
    """Every leaf field of ``config`` in schema order, nested sections flattened to dotted keys."""
    return _walk(config, prefix="")


def _walk(model: BaseModel, *, prefix: str) -> list[FieldRow]:
    rows: list[FieldRow] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel) and _is_section(field.annotation):
            rows += _walk(value, prefix=f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(FieldRow(key=f"{prefix}{name}", value=show(value),
                             default="(required)" if default is PydanticUndefined else show(default),
                             doc=" ".join((field.description or "").split())))
    return rows


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def show(value: Any) -> str:
    """A value as it would be written in YAML: null, true, 0.005, [q_proj, v_proj], {a: 1}."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and value.strip() == value and value[0] not in "[{'\"&*!|>%@`#"
        return value if plain else json.dumps(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def render(rows: list[FieldRow], *, changed_only: bool = False) -> str:
    """Plain text, one section per block and one field per line: ``key  value  default  doc``.

    A ``*`` marks values that differ from the default.
    """
    shown = [r for r in rows if r.changed or not changed_only]
    if not shown:
        return "every field has its default value"
    width_key = max(len(r.key) for r in shown)
    width_value = min(max(len(r.value) for r in shown), 40)
    width_default = min(max(len(r.default) for r in shown), 30)
    lines = [f"  {'key':<{width_key}}  {'value':<{width_value}}  {'default':<{width_default}}  description"]
    section = None
    for r in shown:
        top = r.key.split(".")[0] if "." in r.key else "(top level)"
        if top != section:
            lines += ["", f"[{top}]"]
            section = top
        mark = "*" if r.changed else " "
        lines.append(f"{mark} {r.key:<{width_key}}  {r.value:<{width_value}}  {r.default:<{width_default}}  {r.doc}")
    return "\n".join(lines) + "\n\n* differs from the default"


__all__ = ["FieldRow", "field_rows", "render", "show"]
