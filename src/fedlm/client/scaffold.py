"""SCAFFOLD's control variates (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", Algorithm 1 with option II).

Every client i keeps ``c_i`` and the server keeps ``c``, one tensor per trainable name,
all starting at zero. In a round with ``K`` local steps of size ``eta``::

    local step      y <- y - eta (g(y) + c - c_i)
    option II       c_i+ = c_i - c + (x - y_i) / (K eta)            (x: global, y_i: local)
    client sends    Δy_i = y_i - x   and   Δc_i = c_i+ - c_i = -c - Δy_i / (K eta)
    server          c <- c + (1/N) Σ_{i in S} Δc_i                   (N: all clients)

``Δc_i`` is a function of ``Δy_i``, ``c``, ``K`` and ``eta`` alone, all of which the server
already holds, so fedlm's server derives it from the decoded delta instead of receiving a
second tensor per client: the same arithmetic as the paper with half the uplink.
Math only; the simulator keeps ``c_i`` as client state and ``c`` as server stage state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedlm.errors import ProtocolError
from fedlm.stages import TensorDict


def _get(c: Mapping[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """``c[name]`` in float32, or zeros when the variate is still empty (round one)."""
    return c[name].to(torch.float32) if name in c else torch.zeros_like(like, dtype=torch.float32)


def correction(c: Mapping[str, torch.Tensor], c_i: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> TensorDict:
    """``c - c_i`` by name (shapes of ``like``): the term added to every local gradient."""
    return {n: _get(c, n, t) - _get(c_i, n, t) for n, t in like.items()}


def control_delta(c: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], *, steps: int, lr: float) -> TensorDict:
    """Option II's ``Δc_i = -c - Δy_i / (K eta)``.

    Raises:
        ProtocolError: ``steps`` or ``lr`` is not positive (the division is undefined).
    """
    if steps <= 0 or lr <= 0:
        raise ProtocolError(f"SCAFFOLD needs local steps > 0 and lr > 0, got steps={steps}, lr={lr}")
    return {n: -_get(c, n, d) - d.to(torch.float32) / (steps * lr) for n, d in delta.items()}


def client_control_update(
    c_i: Mapping[str, torch.Tensor], c: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], *, steps: int, lr: float
) -> TensorDict:
    """Option II: ``c_i+ = c_i - c + (x - y_i) / (K eta) = c_i + Δc_i``."""
    dc = control_delta(c, delta, steps=steps, lr=lr)
    return {n: _get(c_i, n, d) + dc[n] for n, d in delta.items()}


def server_control_update(c: Mapping[str, torch.Tensor], deltas_c: list[Mapping[str, torch.Tensor]], *, num_clients: int) -> TensorDict:
    """``c <- c + (1/N) Σ_i Δc_i`` over the round's clients, N the whole population."""
    if not deltas_c:
        return dict(c)
    if num_clients < len(deltas_c):
        raise ProtocolError(f"{len(deltas_c)} control deltas but only {num_clients} clients in the federation")
    out: TensorDict = {}
    for n, first in deltas_c[0].items():
        acc = _get(c, n, first).clone()
        for dc in deltas_c:
            acc += dc[n].to(torch.float32) / num_clients
        out[n] = acc
    return out


__all__ = ["client_control_update", "control_delta", "correction", "server_control_update"]
