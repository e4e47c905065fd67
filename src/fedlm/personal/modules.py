"""Personal modules (FedPer, Arivazhagan et al. 2019; FedRep, Collins et al. 2021).

A client keeps some of its trainable tensors to itself: they are trained locally every
round, never uploaded, and never overwritten by the broadcast. The rest is federated as
usual. With LoRA the tensors are named like the saved PEFT adapter, e.g.
``base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight``; a pattern is a
substring of those names (``"layers.1."`` keeps the last layer of a 2-layer model local,
as FedPer keeps the head; ``"v_proj"`` keeps every value projection's adapter).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fedlm.errors import ConfigError
from fedlm.stages import TensorDict


def personal_names(names: Iterable[str], patterns: Sequence[str]) -> set[str]:
    """The trainable names that contain any of ``patterns``.

    Raises:
        ConfigError: no pattern matches, or every tensor would stay local (nothing left
            to federate); the message lists a few names to choose from.
    """
    names = list(names)
    if not patterns:
        return set()
    chosen = {n for n in names if any(p in n for p in patterns)}
    if not chosen:
        raise ConfigError(
            f"personal.local_modules={list(patterns)} matches no trainable tensor; names look like {names[:3]}"
        )
    if len(chosen) == len(names):
        raise ConfigError(
            f"personal.local_modules={list(patterns)} matches all {len(names)} trainable tensors, so nothing "
            "is federated; choose a subset (e.g. one layer's adapters) or use personal.method=ditto"
        )
    return chosen


def split_personal(tensors: TensorDict, personal: set[str]) -> tuple[TensorDict, TensorDict]:
    """``(shared, personal)``: the tensors that are uploaded and those that stay local."""
    shared = {k: v for k, v in tensors.items() if k not in personal}
    own = {k: v for k, v in tensors.items() if k in personal}
    return shared, own


__all__ = ["personal_names", "split_personal"]
