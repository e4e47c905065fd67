"""The two halves of a :class:`~fedlm.engine.simulation.Simulation` for a deployment.

A deployed server holds no client data and a deployed client holds only its own, yet
both must build the very pipelines, capabilities, seeds and cohort sampling of the
simulator. Both halves are ordinary engines (``build_engine``) over a :class:`FederatedData` whose absent
clients are *placeholders*: their example lists have the right length (what sampling,
weights and SecAgg+ bounds read) but no examples. Client seeds come from a client's
index in the sorted id list, which is why every client learns the full id list.

Features that need client data on the server (FLTrust's root set, contribution
measurement, privacy audits, benchmark evaluation, data poisoning) are refused by
:func:`check_deployable`. Personal modules and Ditto train as in simulation (their
tensors stay in each client's state on its disk), and at the end of a run each client
scores its personal model (after-run fine-tuning included) next to the global one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fedlm.capabilities import build_engine
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import ClientData, FederatedData
from fedlm.engine.simulation import Simulation
from fedlm.errors import ConfigError
from fedlm.models.adapters import AdaptedModel

ClientSizes = dict[str, dict[str, Any]]  # client id -> {"train": n, "heldout": n, "chars": n, "labels": {...}}


class _Absent(list):
    """A client's examples that live on another machine: only their count is known."""

    def __init__(self, n: int) -> None:
        super().__init__([None] * int(n))


def check_deployable(config: ExperimentConfig) -> None:
    """Reject what a deployed federation cannot run, with the setting to change."""
    refused = {
        "robust.aggregator=fltrust (the server has no root data)": config.robust.aggregator == "fltrust",
        "explain.contribution (needs server-side validation data)": config.explain.contribution != "off",
        "audit.enabled (needs every client's data)": config.audit.enabled,
        "attack.kind (data poisoning is a simulation experiment)": config.attack.kind != "none",
        "eval_harness.enabled (run it on the final adapter instead)": config.eval_harness.enabled,
        "eval.bias_probe": bool(config.eval.bias_probe),
    }
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise ConfigError(f"fedlm deploy cannot run {', '.join(bad)}; turn it off or use fedlm run")


def placeholder_data(sizes: ClientSizes, fmt: str, own: dict[str, ClientData] | None = None) -> FederatedData:
    """Every client of the federation, sorted by id; only ``own`` hold real examples."""
    clients: dict[str, ClientData] = {}
    for cid in sorted(sizes):
        if own and cid in own:
            clients[cid] = own[cid]
            continue
        s = sizes[cid]
        clients[cid] = ClientData(_Absent(s.get("train", 0)), _Absent(s.get("heldout", 0)),
                                  Counter(s.get("labels") or {}), int(s.get("chars", 0)))
    return FederatedData(clients, fmt)


def server_simulation(config: ExperimentConfig, model: AdaptedModel, sizes: ClientSizes, fmt: str) -> Simulation:
    """The server half: plans, broadcasts and server stages; no client examples."""
    check_deployable(config)
    return build_engine(config, model, placeholder_data(sizes, fmt))


def client_simulation(
    config: ExperimentConfig, model: AdaptedModel, sizes: ClientSizes, cid: str, data: ClientData, fmt: str
) -> Simulation:
    """The client half for ``cid``: its local training and client stages over its own data."""
    check_deployable(config)
    return build_engine(config, model, placeholder_data(sizes, fmt, own={cid: data}))


def client_sizes(cid: str, data: ClientData) -> dict[str, Any]:
    """What a client tells the server at registration (counts only, never examples)."""
    return {"client_id": cid, "train": len(data.train), "heldout": len(data.heldout), "chars": data.chars,
            "labels": dict(data.labels)}


__all__ = ["ClientSizes", "check_deployable", "client_simulation", "client_sizes", "placeholder_data",
           "server_simulation"]
