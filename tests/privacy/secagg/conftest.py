"""Helpers that drive one SecAgg round by hand, phase by phase."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggClient, SecAggServer
from fedlm.privacy.secagg.errors import InsecureSecAggWarning
from fedlm.privacy.secagg.identity import enrolment, generate_identity


class HandRound:
    """A server and its clients, advanced one phase at a time by the test.

    ``authenticated`` (the default) gives every client an Ed25519 identity and the
    cohort's enrolment map, so the round signs keys and runs the consistency check;
    ``False`` gives them no identity (the semi-honest protocol, as a deployment that does
    not pass identities runs it).
    """

    def __init__(
        self,
        n: int,
        *,
        length: int,
        config: SecAggConfig,
        graph_seed: int = 7,
        authenticated: bool = True,
    ) -> None:
        self.ids = [f"c{i}" for i in range(n)]
        self.config = config
        self.server = SecAggServer(
            self.ids, vector_len=length, config=config, graph_seed=graph_seed
        )
        self.identities = {c: generate_identity() for c in self.ids}
        self.enrolled = enrolment(self.identities)
        if authenticated:
            self.clients = {
                c: SecAggClient(
                    c,
                    rng=np.random.default_rng(i),
                    config=config,
                    identity=self.identities[c],
                    known_identities=self.enrolled,
                )
                for i, c in enumerate(self.ids)
            }
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureSecAggWarning)
                self.clients = {
                    c: SecAggClient(c, rng=np.random.default_rng(i), config=config)
                    for i, c in enumerate(self.ids)
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

    def sign(self, skip: frozenset[str] = frozenset()):
        """Collect the masked inputs; the survivors sign U3 (authenticated rounds only)."""
        self.check = self.server.masked_input(self.masked.values())
        self.signed = {
            c: self.clients[c].consistency(m) for c, m in self.check.items() if c not in skip
        }
        return self.signed

    def unmask(self, skip: frozenset[str] = frozenset()):
        """The unmask answers; runs the consistency phase first when the clients sign."""
        if self.server.phase == "masked_input":
            if self.server.authenticated:
                self.sign()
            else:
                self.req = self.server.masked_input(self.masked.values())
        if self.server.phase == "consistency":
            self.req = self.server.consistency(self.signed.values())
        self.answers = {c: self.clients[c].unmask(m) for c, m in self.req.items() if c not in skip}
        return self.answers


@pytest.fixture
def hand_round():
    """Factory: ``hand_round(n, length=..., config=..., authenticated=True)`` -> a :class:`HandRound`."""
    return HandRound
