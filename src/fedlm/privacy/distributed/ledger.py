"""The privacy ledger of a run with distributed discrete noise, round by round.

Each round's noise is what reached the secure sum: ``h`` honest shares (the survivors of
SecAgg+'s masked-input phase, less the clients that may be dishonest), each of local scale
``s = sigma / (gamma sqrt(n))`` for the ``n`` shares the round was sized for, so the sum's
noise has std ``sigma sqrt(h / n)`` (:func:`.accounting.round_rdp` with
``noise_stddev = sigma sqrt(h / n)`` and ``num_clients = h``). Rounds compose by adding RDP
(Mironov 2017), at any mix of ``(n, h)``; ``h = 0`` is a round without a noise guarantee
(epsilon infinite). Poisson amplification (:func:`.accounting.poisson_subsampled_rdp`) applies per round when the
cohort is secret from the adversary; :meth:`DistributedLedger.epsilon` gives both.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.accounting import RDP_ORDERS, rdp_to_epsilon, round_rdp


class DistributedLedger:
    """Rounds of the distributed discrete Gaussian or Skellam, and their epsilon.

    Args:
        mechanism: "ddgauss" or "skellam".
        clip, gamma, noise_stddev, dim, beta: the mechanism's fixed parameters
            (:class:`~fedlm.privacy.distributed.mechanism.DistributedDpParams`).
        delta: target delta.
        sample_rate: ``q`` of Poisson sampling, or None (no amplification claimed).
    """

    def __init__(self, mechanism: str, *, clip: float, gamma: float, noise_stddev: float, dim: int, beta: float,
                 delta: float, sample_rate: float | None) -> None:
        self.mechanism, self.clip, self.gamma, self.noise_stddev = mechanism, clip, gamma, noise_stddev
        self.dim, self.beta, self.delta, self.sample_rate = dim, beta, delta, sample_rate
        self._history: list[list[int]] = []  # [[shares n, honest h, rounds], ...]

    @property
    def rounds(self) -> int:
        return sum(c for _, _, c in self._history)

    def step(self, shares: int, honest: int, n: int = 1) -> None:
        """Compose ``n`` rounds whose sum held ``honest`` of ``shares`` planned noise shares."""
        if shares < 1 or honest < 0 or n < 0:
            raise ConfigError(f"need shares >= 1, honest >= 0, n >= 0; got {shares}, {honest}, {n}")
        if n == 0:
            return
        if self._history and self._history[-1][:2] == [shares, honest]:
            self._history[-1][2] += n
        else:
            self._history.append([int(shares), int(honest), int(n)])

    def epsilon(self, *, amplified: bool = True, extra: tuple[int, int, int] | None = None) -> float:
        """Epsilon at ``delta`` so far (plus ``extra = (shares, honest, rounds)`` planned).

        Args:
            amplified: apply Poisson amplification (only meaningful with a secret cohort);
                False gives the epsilon against whoever knows who was sampled (the server).
        """
        history = [*self._history, *([list(extra)] if extra and extra[2] else [])]
        if not history:
            return 0.0
        rate = self.sample_rate if amplified and self.sample_rate is not None else 1.0
        total = np.zeros(len(RDP_ORDERS))
        for n, h, count in history:
            if h == 0:
                return math.inf
            total = total + count * self.rdp(n, h, rate)
        return rdp_to_epsilon(RDP_ORDERS, total, self.delta)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one ledger per run; keys are a few (n, h) pairs
    def rdp(self, shares: int, honest: int, rate: float = 1.0) -> np.ndarray:
        """RDP at ``RDP_ORDERS`` of one round with ``honest`` of ``shares`` noise shares, sampled at ``rate``."""
        sigma = self.noise_stddev * math.sqrt(honest / shares)
        return round_rdp(self.mechanism, clip=self.clip, gamma=self.gamma, noise_stddev=sigma,
                         num_clients=honest, dim=self.dim, beta=self.beta, sample_rate=rate)

    def state_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "clip": self.clip, "gamma": self.gamma,
                "noise_stddev": self.noise_stddev, "dim": self.dim, "beta": self.beta, "delta": self.delta,
                "sample_rate": self.sample_rate, "history": [list(h) for h in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history; the mechanism's parameters must match this run's."""
        mine = self.state_dict()
        for key in ("mechanism", "clip", "gamma", "noise_stddev", "dim", "beta", "delta", "sample_rate"):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"the checkpoint's distributed-DP ledger has {key}={state.get(key)!r} but this run has "
                    f"{mine[key]!r}; resume with the privacy config (and federation.rounds) the run started with"
                )
        self._history = [[int(n), int(h), int(c)] for n, h, c in state["history"]]


__all__ = ["DistributedLedger"]
