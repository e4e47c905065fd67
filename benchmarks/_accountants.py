"""fedlm's accountant beside Flower's and Opacus's, with and without sampling amplification.

Each peer is called through its own public API:

* Flower: ``flwr.serverapp.RdpAccountant`` with a ``PrivacyConfig`` whose sampling method is
  ``NO_AMPLIFICATION`` or ``POISSON`` (add/remove-one neighbours), composing one
  ``GaussianPrivacyEvent(z, k, n)`` per round;
* Opacus: ``opacus.accountants.RDPAccountant`` with the history ``[(z, q, rounds)]`` (its own
  RDP of the Poisson-subsampled Gaussian, Mironov et al. 2019; ``q = 1`` is no sampling).

Without amplification the three share one closed form, so agreement there says little; with
Poisson sampling each computes the subsampled Gaussian's RDP its own way over its own Renyi
orders, which is the comparison that can disagree. Each RDP epsilon is an upper bound, so
the finer a peer's grid of orders, the smaller its bound may be; fedlm's PLD figure (tighter)
must be at or below every RDP figure.

Nothing is tuned or random: every figure is a deterministic function of (z, q, rounds, delta).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

from benchmarks._dp_runs import DELTA
from fedlm.privacy.accountant import PrivacyAccountant

POPULATION = 1000
# (noise multiplier z, sampled share q, rounds): the dp example's eps-8 point (q 0.1, 40
# rounds), a cross-device point (q 0.01, 1,000 rounds) and the cross-silo q = 1.
POINTS = ((0.826, 0.1, 40), (1.0, 0.1, 100), (2.0, 0.1, 40), (1.0, 0.01, 1000), (2.86, 1.0, 20), (1.0, 1.0, 40))

_FLOWER = """
import json, sys
from flwr.serverapp import RdpAccountant
from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation,
    PrivacyConfig, SamplingMethod)
a = json.loads(sys.argv[1])
cfg = PrivacyConfig(target_delta=a["delta"], population_size=a["n"],
    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
    sampling_method=SamplingMethod(a["sampling"]))
acc = RdpAccountant(cfg)
acc.compose(GaussianPrivacyEvent(noise_multiplier=a["z"], sample_size=a["k"], population_size=a["n"]),
            count=a["rounds"])
print(json.dumps(acc.get_epsilon(a["delta"])))
"""


def flower_epsilon(z: float, rounds: int, n: int, k: int, *, poisson: bool = False) -> tuple[float | None, str]:
    """Flower's RdpAccountant (Poisson rate k / n, or no amplification), or (None, why not).

    Runs in a subprocess: in-process if flwr is importable here, else with the interpreter
    named by ``$FEDLM_FLWR_PYTHON``.
    """
    sampling = "poisson" if poisson else "no-amplification"
    args = json.dumps({"z": z, "rounds": rounds, "n": n, "k": k, "delta": DELTA, "sampling": sampling})
    try:
        import flwr  # noqa: F401

        python = sys.executable
    except ImportError:
        python = os.environ.get("FEDLM_FLWR_PYTHON", "")
        if not python:
            return None, "flwr not importable and FEDLM_FLWR_PYTHON unset"
    out = subprocess.run([python, "-c", _FLOWER, args], capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["flwr failed"])[-1]
    return float(json.loads(out.stdout.strip().splitlines()[-1])), f"flwr {_flwr_version(python)} RdpAccountant ({sampling})"


@functools.cache
def _flwr_version(python: str) -> str:
    """flwr's version under ``python`` (asked once per interpreter, not once per point)."""
    return subprocess.run([python, "-c", "import flwr; print(flwr.__version__)"], capture_output=True,
                          text=True, check=False).stdout.strip()


def opacus_epsilon(z: float, rounds: int, q: float = 1.0) -> float:
    """Opacus's RDP accountant for ``rounds`` Poisson-sampled Gaussian steps at rate ``q``."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(z, q, rounds)]
    return float(acc.get_epsilon(delta=DELTA))


def fedlm_epsilon(kind: str, sampling: str, z: float, rounds: int, n: int, k: int) -> float:
    """fedlm's ``PrivacyAccountant`` after ``rounds`` rounds (``kind`` rdp or pld)."""
    acc = PrivacyAccountant(kind, sampling, noise_multiplier=z, delta=DELTA,
                            sample_rate=k / n if sampling == "poisson" else None, population=n)
    acc.step(rounds)
    return acc.epsilon()


def compare_point(z: float, q: float, rounds: int, n: int = POPULATION) -> dict[str, Any]:
    """Every accountant at one point; ``q = 1`` is every client every round."""
    k = round(q * n)
    amplified = q < 1.0
    sampling = "poisson" if amplified else "none"
    flower, note = flower_epsilon(z, rounds, n, k, poisson=amplified)
    row: dict[str, Any] = {
        "z": z, "q": q, "rounds": rounds, "delta": DELTA, "population": n,
        "fedlm_rdp": fedlm_epsilon("rdp", sampling, z, rounds, n, k),
        "fedlm_pld": fedlm_epsilon("pld", sampling, z, rounds, n, k),
        "flower_rdp": flower,
        "opacus_rdp": opacus_epsilon(z, rounds, q),
        "flower_note": note,
    }
    peers = [v for v in (row["flower_rdp"], row["opacus_rdp"]) if v is not None]
    row["fedlm_rdp_vs_peers_max_rel"] = max(abs(row["fedlm_rdp"] / v - 1) for v in peers)
    row["pld_at_or_below_rdp"] = row["fedlm_pld"] <= min([row["fedlm_rdp"], *peers]) * (1 + 1e-9)
    return row


def compare_accountants(points: tuple[tuple[float, float, int], ...] = POINTS) -> list[dict[str, Any]]:
    return [compare_point(z, q, rounds) for z, q, rounds in points]


__all__ = ["DELTA", "POINTS", "compare_accountants", "compare_point", "fedlm_epsilon", "flower_epsilon",
           "opacus_epsilon"]
