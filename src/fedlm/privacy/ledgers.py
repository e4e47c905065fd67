"""The ledgers of a client-level DP run, stepped at the noise each round's sum really held.

Three views of one run (:class:`DpLedgers`):

* the release ledger: epsilon against whoever reads the run's outputs (the model, the
  logs), with amplification by sampling when the cohort is secret;
* against the server (client noise modes only): the server chose the cohort, so no
  amplification;
* in both, a round's noise is what reached the sum: under SecAgg+ the shares of the
  survivors of the masked-input phase, less the ``floor((1 - f) k)`` clients that may be
  dishonest. Gaussian shares of std ``z S / sqrt(k f)`` then give the sum the multiplier
  ``z_r = z sqrt(h / (k f))`` (:class:`~fedlm.privacy.accountant.PrivacyAccountant`
  composes rounds of different ``z``); discrete shares go to
  :class:`~fedlm.privacy.distributed.ledger.DistributedLedger`. A round whose secure sum
  was aborted revealed nothing; it is accounted at the planned noise (conservative).
"""

from __future__ import annotations

import math
from typing import Any

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.stages import honest_shares, honest_survivors
from fedlm.privacy.plan import DpPlan

RELEASE, SERVER, DISTRIBUTED = "privacy_accountant", "privacy_accountant_server", "privacy_distributed_ledger"


class DpLedgers:
    """The run's ledgers (see the module docstring); ``totals``/``load`` ride in the checkpoint."""

    def __init__(self, plan: DpPlan) -> None:
        self.plan = plan
        self.accountant = self.server = self.ledger = None
        if plan.discrete is not None:
            self.ledger = plan.ledger()
        else:
            self.accountant = plan.release_accountant()
            if plan.mode == "distributed":
                self.server = plan.server_accountant()
        self._next: tuple[int, float] | None = None  # cached (rounds, epsilon after one more)

    @property
    def kind(self) -> str:
        return self.accountant.kind if self.accountant is not None else "rdp"

    @property
    def rounds(self) -> int:
        return (self.ledger or self.accountant).rounds

    def epsilon(self) -> float:
        """The reported epsilon so far (against whoever reads the run's outputs)."""
        return self.ledger.epsilon(amplified=True) if self.ledger is not None else self.accountant.epsilon()

    def epsilon_server(self) -> float | None:
        """Against the server, which chose the cohort (client noise modes); None in central mode."""
        if self.ledger is not None:
            return self.ledger.epsilon(amplified=False)
        return self.server.epsilon() if self.server is not None else None

    def epsilon_after_next(self) -> float:
        """Epsilon if one more round ran at the planned noise (the budget check)."""
        if self.ledger is not None:
            n = honest_shares(self.plan.cohort_size, self.plan.min_honest_fraction)
            after = self.ledger.epsilon(amplified=True, extra=(n, n, 1))
        else:
            after = self.accountant.epsilon_after(1)
        self._next = (self.rounds, after)
        return after

    def step(self, cohort_size: int, survivors: int | None) -> dict[str, Any]:
        """Account one round of ``cohort_size`` clients whose sum held ``survivors`` inputs
        (None: no secure sum was revealed, or central mode); returns the record's fields."""
        plan, f = self.plan, self.plan.min_honest_fraction
        honest = honest_survivors(survivors, cohort_size, f) if survivors is not None and cohort_size else None
        info: dict[str, Any] = {}
        z = plan.noise_multiplier
        if self.ledger is not None:
            shares = honest_shares(max(cohort_size, 1), f)
            got = shares if honest is None else honest
            self.ledger.step(shares, got)
            z = plan.noise_multiplier * math.sqrt(got / shares)
            info["noise_shares"] = {"planned": shares, "in_sum": got}
        elif plan.mode == "distributed" and honest is not None:
            z = plan.noise_multiplier * math.sqrt(honest / (cohort_size * f))
            info["noise_shares"] = {"planned": cohort_size, "in_sum": honest}
        if self.accountant is not None:
            cached, self._next = self._next, None
            self.accountant.step(1, noise_multiplier=z)
            reuse = z == plan.noise_multiplier and cached is not None and cached[0] == self.accountant.rounds - 1
            eps = cached[1] if reuse else self.accountant.epsilon()
        else:
            eps = self.epsilon()
        if self.server is not None:
            self.server.step(1, noise_multiplier=z)
        info.update(epsilon=eps, delta=plan.delta, accountant=self.kind, noise_multiplier=z,
                    rounds_accounted=self.rounds)
        if plan.mode != "central":
            info["epsilon_server"] = self.epsilon_server()
        return info

    def totals(self) -> dict[str, Any]:
        out = {}
        for key, ledger in ((RELEASE, self.accountant), (SERVER, self.server), (DISTRIBUTED, self.ledger)):
            if ledger is not None:
                out[key] = ledger.state_dict()
        return out

    def load(self, totals: dict[str, Any]) -> None:
        """Continue the ledgers of a checkpoint's ``totals``.

        Raises:
            ConfigError: the checkpoint was accounted at another noise multiplier (a
                calibrated run resumed with another ``federation.rounds``).
        """
        if self.accountant is not None and RELEASE in totals:
            saved = float(totals[RELEASE]["noise_multiplier"])
            if abs(saved - self.plan.noise_multiplier) > 1e-12 * saved:
                raise ConfigError(
                    f"the checkpoint's noise multiplier is {saved:.6g} but this config gives "
                    f"{self.plan.noise_multiplier:.6g} (target_epsilon is calibrated for federation.rounds, which "
                    "was changed); resume with the run's original federation.rounds so the noise added matches "
                    "the ledger"
                )
            self.accountant.load_state_dict(totals[RELEASE])
        if self.server is not None and SERVER in totals:
            self.server.load_state_dict(totals[SERVER])
        if self.ledger is not None and DISTRIBUTED in totals:
            self.ledger.load_state_dict(totals[DISTRIBUTED])


__all__ = ["DISTRIBUTED", "RELEASE", "SERVER", "DpLedgers"]
