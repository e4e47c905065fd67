"""Client-level privacy accounting for DP-FedAvg with Google's ``dp-accounting``.

One round of DP-FedAvg (McMahan et al. 2018) is a sampled Gaussian mechanism on the set
of clients; the accountant composes one ``DpEvent`` per round and converts to
``(epsilon, delta)`` with Renyi DP (Mironov 2017; ``dp_accounting.rdp.RdpAccountant``) or
privacy loss distributions (Koskela et al. 2020, Doroshenko et al. 2022;
``dp_accounting.pld.PLDAccountant``; tighter, slower).

Per-round events (``z`` is the noise std over the sum's sensitivity ``S``, see
:mod:`fedlm.privacy.noise`):

* ``sampling="poisson"``: each client joins with probability ``q``:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, add/remove-one neighbours.
* ``sampling="fixed"``: ``k`` of ``N`` clients uniformly without replacement:
  ``SampledWithoutReplacementDpEvent(N, k, GaussianDpEvent(z / 2))`` under replace-one
  neighbours (``N`` is public). Replacing a client moves the clipped sum by up to ``2S``,
  hence ``z / 2``. RDP only: dp-accounting's PLD accountant does not support this event.
* ``sampling="none"``: every client every round (or sampling not random):
  ``GaussianDpEvent(z)``, no amplification.

With adaptive clipping (Andrew et al. 2021) each round makes two Gaussian releases on the
same cohort, the update sum with ``z_delta`` and the unclipped count with ``2 sigma_b``;
the inner event is ``ComposedDpEvent([GaussianDpEvent(z_delta), GaussianDpEvent(2 sigma_b)])``
(halved for "fixed" as above), which by construction of ``z_delta`` is worth exactly one
Gaussian with multiplier ``z``. dp-accounting's PLD accountant only samples a single
Gaussian, so for PLD with Poisson sampling the inner event is that equivalent
``GaussianDpEvent(z_eff)``.

The accountant keeps its history as ``[(z, rounds), ...]`` segments, so a run whose noise
multiplier changes part way (recalibrated, or lower in rounds where distributed noise shares
dropped out, :meth:`PrivacyAccountant.step` with ``noise_multiplier``) is still accounted
exactly; dp-accounting composes events of different ``z``. A segment with ``z = 0`` is a
round whose release had no noise guarantee (``NonPrivateDpEvent``: epsilon is infinite).
``state_dict`` / ``load_state_dict`` make resume exact.

PLD's grid. dp-accounting discretises the privacy loss in steps of
``value_discretization_interval`` (1e-4 by default), and its arrays span the composed loss,
about ``sum_r 1/(2 z_r^2)`` plus a few standard deviations ``sqrt(sum_r 1/z_r^2)``. At
``z = 0.1`` over 20 rounds that is 10^7 points and about 5 GB; at ``z = 0.01`` the process
runs out of memory. :func:`pld_interval` coarsens the step so the span stays near
``PLD_POINTS`` points. The discretisation is pessimistic, so a coarser step can only raise
the epsilon: at (z 0.5, 1,000 rounds, q 0.1) the step grows 25x and epsilon moves from
126.1666 to 126.1672; at (1, 1,000, 0.1), 7.5x and 25.2046 both times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dp_accounting as dpa
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedlm.errors import ConfigError
from fedlm.privacy.calibrate import least_noise
from fedlm.privacy.clipping import split_noise_multiplier

KINDS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed", "none")
PLD_INTERVAL = 1e-4  # dp-accounting's default discretisation step of the privacy loss
PLD_POINTS = 1_000_000  # about 0.5 GB of dp-accounting's arrays


def pld_interval(segments: Sequence[tuple[float, int]]) -> float:
    """PLD's discretisation step for ``[(z, rounds), ...]``: the default, or coarser so that
    the unamplified composed loss's mean plus 8 standard deviations fits in ``PLD_POINTS``
    steps (an over-estimate under sampling, which only makes the step coarser than needed)."""
    inv = sum(n / (z * z) for z, n in segments if z > 0 and n > 0)  # sum_r 1/z_r^2
    span = inv / 2.0 + 8.0 * math.sqrt(inv)
    return max(PLD_INTERVAL, span / PLD_POINTS)


def check_delta(delta: float, num_clients: int | None) -> None:
    """Reject ``delta`` outside (0, 1) or ``>= 1 / num_clients``.

    With ``delta >= 1/N`` a mechanism that publishes one random client's data in the clear
    satisfies the definition, so such a delta protects nobody.
    """
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}; use e.g. 1e-5")
    if num_clients is not None:
        if num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {num_clients!r}")
        if delta >= 1.0 / num_clients:
            raise ConfigError(
                f"delta must be below 1/num_clients = {1.0 / num_clients:.3g}, got {delta!r}; "
                f"use delta <= {0.1 / num_clients:.1g} (a common choice is 1/num_clients^1.1)"
            )


class PrivacyAccountant:
    """Tracks ``epsilon`` at a fixed ``delta`` over DP-FedAvg rounds.

    Args:
        kind: "rdp" or "pld".
        sampling: "poisson", "fixed" or "none" (see the module docstring).
        noise_multiplier: ``z`` (> 0), the total multiplier (with adaptive clipping the
            update noise uses ``z_delta > z``; the accountant is planned for ``z``).
        delta: target ``delta`` in (0, 1/population).
        sample_rate: ``q`` in (0, 1] for "poisson" (or give cohort_size and population).
        cohort_size: ``k`` for "fixed" (or to derive ``q = k / N`` for "poisson").
        population: ``N``, the number of clients; needed for "fixed", checks ``delta``.
        clipped_count_stddev: ``sigma_b`` when adaptive clipping is on, else None.

    Raises:
        ConfigError: an invalid value or an unsupported combination (PLD with "fixed").
    """

    def __init__(
        self,
        kind: str = "rdp",
        sampling: str = "poisson",
        *,
        noise_multiplier: float,
        delta: float,
        sample_rate: float | None = None,
        cohort_size: int | None = None,
        population: int | None = None,
        clipped_count_stddev: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"accountant must be one of {list(KINDS)}, got {kind!r}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
        _check_z(noise_multiplier)
        check_delta(delta, population)
        self.kind = kind
        self.sampling = sampling
        self.delta = float(delta)
        self.population = population
        self.cohort_size = cohort_size
        self.clipped_count_stddev = clipped_count_stddev
        self.sample_rate = _resolve_rate(kind, sampling, sample_rate, cohort_size, population)
        if clipped_count_stddev is not None:
            split_noise_multiplier(noise_multiplier, clipped_count_stddev)  # validates
        self.noise_multiplier = float(noise_multiplier)
        self._history: list[tuple[float, int]] = []

    # -- events ---------------------------------------------------------------------------

    def round_event(self, noise_multiplier: float | None = None) -> dpa.DpEvent:
        """The ``DpEvent`` of one round at ``noise_multiplier`` (default: the current z).

        ``z = 0`` (no noise guarantee in that round's release) is a ``NonPrivateDpEvent``.
        """
        z = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        if z == 0.0:
            return dpa.NonPrivateDpEvent()
        _check_z(z)
        # Replace-one neighbours double the sensitivity of the sum (see module docstring).
        scale = 0.5 if self.sampling == "fixed" else 1.0
        if self.clipped_count_stddev is None:
            inner: dpa.DpEvent = dpa.GaussianDpEvent(z * scale)
        else:
            z_delta = split_noise_multiplier(z, self.clipped_count_stddev)
            parts = [z_delta * scale, 2.0 * self.clipped_count_stddev * scale]
            if self.kind == "pld" and self.sampling == "poisson":
                # Two Gaussians on one cohort = one Gaussian with the combined multiplier.
                inner = dpa.GaussianDpEvent(sum(p**-2 for p in parts) ** -0.5)
            else:
                inner = dpa.ComposedDpEvent([dpa.GaussianDpEvent(p) for p in parts])
        if self.sampling == "poisson":
            return dpa.PoissonSampledDpEvent(self.sample_rate, inner)
        if self.sampling == "fixed":
            return dpa.SampledWithoutReplacementDpEvent(self.population, self.cohort_size, inner)
        return inner

    def ledger_event(self, extra_rounds: int = 0) -> dpa.DpEvent:
        """The whole history (plus ``extra_rounds`` at the current z) as one event."""
        return dpa.ComposedDpEvent(
            [dpa.SelfComposedDpEvent(self.round_event(z), n) for z, n in self._segments(extra_rounds)]
        )

    def _segments(self, extra_rounds: int) -> list[tuple[float, int]]:
        """``[(z, rounds), ...]``: the history, plus ``extra_rounds`` at the current z."""
        return [(z, n) for z, n in (*self._history, (self.noise_multiplier, extra_rounds)) if n > 0]

    # -- state ----------------------------------------------------------------------------

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return sum(n for _, n in self._history)

    def step(self, n: int = 1, *, noise_multiplier: float | None = None) -> None:
        """Compose ``n`` rounds at ``noise_multiplier`` (default: the current z).

        A round's own ``z`` (e.g. the noise left in a secure sum after dropouts) does not
        change the current z that later rounds and :meth:`epsilon_after` plan with; ``0``
        records a round whose release had no noise guarantee.
        """
        if n < 0:
            raise ConfigError(f"step count must be >= 0, got {n!r}")
        z = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        if z != 0.0:
            _check_z(z)
        if n == 0:
            return
        if self._history and self._history[-1][0] == z:
            self._history[-1] = (z, self._history[-1][1] + n)
        else:
            self._history.append((z, n))

    def set_noise_multiplier(self, noise_multiplier: float) -> None:
        """Use ``noise_multiplier`` for the rounds composed from now on (recalibration)."""
        _check_z(noise_multiplier)
        if self.clipped_count_stddev is not None:
            split_noise_multiplier(noise_multiplier, self.clipped_count_stddev)
        self.noise_multiplier = float(noise_multiplier)

    def epsilon(self) -> float:
        """``epsilon`` at the configured ``delta`` for the rounds composed so far."""
        return self.epsilon_after(0)

    def epsilon_after(self, extra_rounds: int) -> float:
        """``epsilon`` if ``extra_rounds`` more rounds ran at the current z (no state change)."""
        if extra_rounds < 0:
            raise ConfigError(f"extra_rounds must be >= 0, got {extra_rounds!r}")
        if self.rounds + extra_rounds == 0:
            return 0.0
        acc = self._dp_accountant(extra_rounds)
        acc.compose(self.ledger_event(extra_rounds))
        return float(acc.get_epsilon(self.delta))

    def state_dict(self) -> dict[str, Any]:
        """Settings and history; ``load_state_dict`` on an equal accountant restores it."""
        return {
            "kind": self.kind,
            "sampling": self.sampling,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "cohort_size": self.cohort_size,
            "population": self.population,
            "clipped_count_stddev": self.clipped_count_stddev,
            "noise_multiplier": self.noise_multiplier,
            "history": [[z, n] for z, n in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history; settings other than the noise multiplier must match."""
        mine = self.state_dict()
        for key in (
            "kind",
            "sampling",
            "delta",
            "sample_rate",
            "cohort_size",
            "population",
            "clipped_count_stddev",
        ):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"accountant checkpoint has {key}={state.get(key)!r} but this run has "
                    f"{key}={mine[key]!r}; resume with the privacy config the run started with"
                )
        self.set_noise_multiplier(float(state["noise_multiplier"]))
        self._history = [(float(z), int(n)) for z, n in state["history"]]

    def _dp_accountant(self, extra_rounds: int = 0) -> dpa.PrivacyAccountant:
        if self.kind == "pld":
            return PLDAccountant(value_discretization_interval=pld_interval(self._segments(extra_rounds)))
        if self.sampling == "fixed":
            return RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
        return RdpAccountant()


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    kind: str = "rdp",
    sampling: str = "poisson",
    sample_rate: float | None = None,
    cohort_size: int | None = None,
    population: int | None = None,
    clipped_count_stddev: float | None = None,
    spent: Sequence[tuple[float, int]] = (),
    rel_tol: float = 0.01,
    z_min: float = 0.1,
    z_max: float = 1000.0,
) -> float:
    """Smallest-noise ``z`` (up to ``rel_tol``) whose ``epsilon`` is at most the target.

    A bracketed search on ``log z`` (:func:`~fedlm.privacy.calibrate.least_noise`): the result satisfies
    ``target * (1 - rel_tol) <= epsilon(z) <= target``, unless even ``z_min`` is under the
    target, in which case ``z_min`` is returned (such targets barely constrain the noise).

    Args:
        target_epsilon: the budget (> 0) after ``spent`` plus ``rounds`` more rounds.
        delta: target delta.
        rounds: planned rounds (>= 1) at the calibrated z.
        kind, sampling, sample_rate, cohort_size, population, clipped_count_stddev: as
            for :class:`PrivacyAccountant`.
        spent: ``[(z, rounds), ...]`` already composed (a resumed run's history).
        rel_tol: how far under the target the result may land.
        z_min, z_max: search range.

    Raises:
        ConfigError: the target is not positive, or unreachable even at ``z_max``, or the
            calibrated z leaves no room for the adaptive-clipping count release.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(
            f"target_epsilon must be a positive finite number, got {target_epsilon!r}; use e.g. 8.0"
        )
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1 to calibrate, got {rounds!r}")
    if not 0 < rel_tol < 1:
        raise ConfigError(f"rel_tol must be in (0, 1), got {rel_tol!r}")

    def eps(z: float) -> float:
        acc = PrivacyAccountant(
            kind,
            sampling,
            noise_multiplier=z,
            delta=delta,
            sample_rate=sample_rate,
            cohort_size=cohort_size,
            population=population,
            clipped_count_stddev=None,
        )
        acc._history = [(float(a), int(b)) for a, b in spent]
        return acc.epsilon_after(rounds)

    # Accounting with adaptive clipping equals accounting at the total z (split is exact),
    # so calibrate the total and check the split at the end.
    eps_max = eps(z_max)
    if eps_max > target_epsilon:
        raise ConfigError(
            f"target_epsilon={target_epsilon!r} is unreachable in {rounds} rounds with "
            f"sampling={sampling!r}: even noise_multiplier={z_max:g} gives epsilon={eps_max:.4g}; "
            "raise target_epsilon, plan fewer rounds or sample fewer clients per round"
        )
    # Start near the answer: PLD is slow at small z, and RDP (an upper bound on the PLD
    # epsilon) gives a cheap start.
    guess = 1.0
    if kind == "pld" and sampling != "fixed":
        try:
            guess = calibrate_noise_multiplier(
                target_epsilon, delta, rounds, kind="rdp", sampling=sampling, sample_rate=sample_rate,
                cohort_size=cohort_size, population=population, spent=spent, rel_tol=rel_tol,
                z_min=z_min, z_max=z_max,
            )
        except ConfigError:  # reachable with PLD only: start from the top
            guess = z_max
    z = least_noise(eps, target_epsilon, start=guess, floor=z_min, ceiling=z_max, rel_tol=rel_tol,
                    down=1.25, up=2.0, max_steps=100)
    return _checked(z, clipped_count_stddev)


def _checked(z: float, clipped_count_stddev: float | None) -> float:
    if clipped_count_stddev is not None:
        split_noise_multiplier(z, clipped_count_stddev)
    return z


def _check_z(noise_multiplier: float) -> None:
    if not (
        isinstance(noise_multiplier, int | float)
        and math.isfinite(noise_multiplier)
        and noise_multiplier > 0
    ):
        raise ConfigError(
            f"noise_multiplier must be a positive finite number, got {noise_multiplier!r}; use e.g. 1.0"
        )


def _resolve_rate(
    kind: str,
    sampling: str,
    sample_rate: float | None,
    cohort_size: int | None,
    population: int | None,
) -> float | None:
    if sampling == "none":
        return None
    if sampling == "fixed":
        if kind == "pld":
            raise ConfigError(
                "accountant='pld' does not support sampling='fixed': dp-accounting's PLD "
                "accountant has no SampledWithoutReplacementDpEvent; use accountant='rdp' "
                "with sampling='fixed', or sampling='poisson' with accountant='pld'"
            )
        if cohort_size is None or population is None:
            raise ConfigError(
                "sampling='fixed' needs cohort_size and population (the number of clients)"
            )
        if not 1 <= cohort_size <= population:
            raise ConfigError(
                f"cohort_size must be in [1, population={population}], got {cohort_size!r}"
            )
        return cohort_size / population
    # poisson
    if sample_rate is None:
        if cohort_size is None or population is None:
            raise ConfigError("sampling='poisson' needs sample_rate, or cohort_size and population")
        sample_rate = cohort_size / population
    if not (isinstance(sample_rate, int | float) and 0.0 < sample_rate <= 1.0):
        raise ConfigError(
            f"sample_rate must be in (0, 1], got {sample_rate!r}; use cohort_size / num_clients"
        )
    return float(sample_rate)
