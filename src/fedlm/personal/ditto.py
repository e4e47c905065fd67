"""Ditto's personal objective (Li et al. 2021, "Ditto: Fair and Robust Federated Learning
Through Personalization").

Client k keeps a personal model ``v_k`` and minimises ``F_k(v) + lam/2 ||v - w||^2``,
where ``w`` is the global model it received this round. fedlm applies the quadratic term
as its exact proximal step after every optimiser step on ``F_k``::

    v <- argmin_u  1/(2 eta) ||u - v||^2 + lam/2 ||u - w||^2  =  (v + eta lam w) / (1 + eta lam)

For small ``eta lam`` this is Ditto's gradient step ``v - eta lam (v - w)`` to first order;
unlike the gradient step it is stable for any ``lam`` (no overshoot once
``eta lam > 2``), and ``lam = inf`` gives ``v = w`` exactly: the personal model is the
global one. ``lam = 0`` is local training alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


@torch.no_grad()
def prox_toward(params: Iterable[tuple[str, torch.nn.Parameter]], center: Mapping[str, torch.Tensor], *,
                lr: float, lam: float) -> None:
    """Replace each parameter ``v`` by ``(v + lr lam w) / (1 + lr lam)`` in place (``w = center[name]``)."""
    if lam == 0:
        return
    for name, p in params:
        w = center[name].to(p.device, p.dtype)
        if math.isinf(lam):
            p.copy_(w)
        else:
            c = lr * lam
            p.mul_(1.0 / (1.0 + c)).add_(w, alpha=c / (1.0 + c))


__all__ = ["prox_toward"]
