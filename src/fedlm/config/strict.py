"""Scalars a config must not coerce: a boolean where a number goes, and non-finite numbers.

Pydantic's lax mode reads ``rounds: true`` as 1 and accepts ``lr: .inf``; the first runs a
different experiment than the one written, the second "succeeds" with every update
rejected. ``check_scalars`` walks the raw config against the schema before validation and
refuses both, naming the field. A field where infinity means something is listed in
``NON_FINITE_OK``.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic import BaseModel

NON_FINITE_OK = frozenset({"personal.lam"})  # Ditto's lambda = inf pins the personal adapter to the global one


def _parts(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly optional) annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(annotation) for p in _parts(a)]
    return [annotation]


def check_scalars(model: type[BaseModel], raw: Any, path: str = "") -> None:
    """Raise ``ValueError`` naming the field for a boolean number or a non-finite float in ``raw``."""
    if not isinstance(raw, dict):
        return
    for name, value in raw.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            continue  # unknown keys are the schema's own error (with a "did you mean")
        where = f"{path}{name}"
        kinds = _parts(field.annotation)
        numeric = any(k in (int, float) for k in kinds)
        if isinstance(value, bool) and numeric and bool not in kinds:
            raise ValueError(f"{where}={value!r} is a boolean; this field takes a number (e.g. {where}=3)")
        if isinstance(value, float) and not math.isfinite(value) and where not in NON_FINITE_OK:
            raise ValueError(f"{where}={value!r} is not a finite number; give a finite value")
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                check_scalars(kind, value, f"{where}.")


__all__ = ["NON_FINITE_OK", "check_scalars"]
