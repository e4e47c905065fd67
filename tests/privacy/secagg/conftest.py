"""Helpers that drive one SecAgg round by hand, phase by phase."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggClient, SecAggServer


class HandRound:
    """A server and its clients, advanced one phase at a time by the test."""

    def __init__(self, n: int, *, length: int, config: SecAggConfig, graph_seed: int = 7) -> None:
        self.ids = [f"c{i}" for i in range(n)]
        self.server = SecAggServer(
            self.ids, vector_len=length, config=config, graph_seed=graph_seed
        )
        self.clients = {
            c: SecAggClient(c, rng=np.random.default_rng(i)) for i, c in enumerate(self.ids)
        }
        self.vectors = {
            c: np.linspace(-0.5, 0.5, length) * (i + 1) / n for i, c in enumerate(self.ids)
        }
        self.setup = self.server.setup()

    def advertise(self, skip: frozenset[str] = frozenset()):
        self.adv = {
            c: self.clients[c].advertise_keys(m) for c, m in self.setup.items() if c not in skip
        }
        return self.adv

    def share(self, skip: frozenset[str] = frozenset()):
        self.keys = self.server.advertise_keys(self.adv.values())
        self.shares = {
            c: self.clients[c].share_keys(m) for c, m in self.keys.items() if c not in skip
        }
        return self.shares

    def mask(self, skip: frozenset[str] = frozenset()):
        self.fwd = self.server.share_keys(self.shares.values())
        self.masked = {
            c: self.clients[c].masked_input(m, self.vectors[c])
            for c, m in self.fwd.items()
            if c not in skip
        }
        return self.masked

    def unmask(self, skip: frozenset[str] = frozenset()):
        self.req = self.server.masked_input(self.masked.values())
        self.answers = {c: self.clients[c].unmask(m) for c, m in self.req.items() if c not in skip}
        return self.answers


@pytest.fixture
def hand_round() -> Callable[..., HandRound]:
    return HandRound
