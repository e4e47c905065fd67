"""The differential-privacy capability: sampling, plan values, stages, accounting.

The math lives in :mod:`fedlm.privacy` (clipping, noise, accountant, stages) and in
:mod:`fedlm.client.dp_sgd`; this module plugs it into the round and the loop:

* before training: the population ``N``, the cohort ``k`` (or Poisson rate ``q = k / N``),
  the public denominator ``D`` and the noise multiplier ``z`` (given, or calibrated for the
  planned rounds with :func:`calibrate_noise_multiplier`), and the DP stages;
* each round: the Poisson cohort (``sampling="poisson"``), the round plan's ``DpRound``
  and ``FixedDenominator``, DP-SGD's options for each client, and after the round one
  accountant step, epsilon at ``delta`` into the round's ``metrics.jsonl`` record;
* between rounds: whether one more round would spend more than ``target_epsilon``
  (training then stops cleanly, the final adapter is saved and the reason recorded);
* at the end: ``summary.json["privacy"]``.

The accountant's ledger and the DP-SGD step counts ride in ``ServerState.totals`` so that
a checkpoint holds them and a resumed run continues the same ledger.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.client.local import DpSgdOptions, TrainOptions
from fedlm.config.schema import ExperimentConfig
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, MeanOffer, MeanRank
from fedlm.engine.checkpoint import ServerState
from fedlm.engine.simulation import planned_cohort_size
from fedlm.errors import ConfigError
from fedlm.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier
from fedlm.privacy.noise import capped_weights, sensitivity
from fedlm.privacy.stages import (
    AdaptiveClipStage,
    ClipStage,
    DpMeanStage,
    DpRound,
    dp_fedavg_stages,
)
from fedlm.stages import RoundPlan, Stage

LEDGER_KEY = "privacy_accountant"  # in ServerState.totals
DP_SGD_KEY = "dp_sgd_steps"  # in ServerState.totals: {client_id: [[sample_rate, steps], ...]}


class DifferentialPrivacy(Capability):
    """Client-level DP-FedAvg and/or sample-level DP-SGD in a run.

    Args:
        config: the experiment; ``privacy.enabled`` or ``privacy.dp_sgd.enabled``.
        data: the federated data (population and example counts).

    Raises:
        ConfigError: ``delta >= 1/N``, or ``target_epsilon`` unreachable in the planned rounds.
    """

    name = "privacy"
    plan_fields = (DpRound, FixedDenominator)

    @classmethod
    def build(cls, ctx: EngineContext) -> DifferentialPrivacy | None:
        p = ctx.config.privacy
        return cls(ctx.config, ctx.data) if p.enabled or p.dp_sgd.enabled else None

    def __init__(self, config: ExperimentConfig, data) -> None:
        p, fed = config.privacy, config.federation
        self.config = config
        self.client_level = p.enabled
        self.dp_sgd = p.dp_sgd if p.dp_sgd.enabled else None
        self.population = len(data.clients)
        self.cohort_size = planned_cohort_size(config, self.population)
        self.num_examples = {cid: len(c.train) for cid, c in data.clients.items()}
        self.stopped_because: str | None = None
        self.sgd_ledger: dict[str, list[list[float]]] = {}  # DP-SGD: {client: [[q, steps], ...]}
        self.accountant: PrivacyAccountant | None = None
        self._client_stages: list[Stage] = []
        self._server_stages: list[Stage] = []
        self._mean: DpMeanStage | None = None
        if not self.client_level:
            return
        p.check_population(self.population)
        n, k = self.population, self.cohort_size
        self.sample_rate = k / n if p.sampling != "none" else None
        self.expected_cohort_size = float(k)  # q N for Poisson, k for fixed-size
        if p.weighting == "capped":
            q = k / n
            self.denominator = q * sum(capped_weights(list(self.num_examples.values()), float(p.max_weight or 0)))
        else:
            self.denominator = self.expected_cohort_size
        sigma_b = p.clipped_count_stddev if p.adaptive_clipping else None
        common = {
            "kind": p.accountant,
            "sampling": p.sampling,
            "sample_rate": self.sample_rate if p.sampling == "poisson" else None,
            "cohort_size": k if p.sampling == "fixed" else None,
            "population": n,
        }
        if p.target_epsilon is not None and p.on_budget_exhausted != "stop":
            z = calibrate_noise_multiplier(
                p.target_epsilon, p.delta, fed.rounds, clipped_count_stddev=sigma_b, **common
            )
            self.z_source = "calibrated"
        else:
            z = float(p.noise_multiplier)  # type: ignore[arg-type]
            self.z_source = "given"
        self.noise_multiplier = z
        self.accountant = PrivacyAccountant(
            noise_multiplier=z, delta=p.delta, clipped_count_stddev=sigma_b, **common
        )
        client, server = dp_fedavg_stages(
            p, z, expected_cohort_size=self.expected_cohort_size, secret_seed=p.noise_seed
        )
        self._client_stages = client
        self._mean = DpMeanStage(
            clip_norm=p.clip_norm, weighting=p.weighting, max_weight=p.max_weight,
            reclip=p.mode == "central",  # re-clipping a noise share would strip its noise
        )
        self._server_stages = server
        self._next: tuple[int, float] | None = None  # cached (rounds, epsilon_after(1))

    # ------------------------------------------------------------------ stages
    def client_stages(self) -> list[Stage]:
        return list(self._client_stages)

    def server_stages(self) -> list[Stage]:
        return list(self._server_stages)

    def mean(self) -> MeanOffer | None:
        """DP's bounded-sensitivity mean over a public denominator (outranks any other mean)."""
        return MeanOffer(self._mean, MeanRank.GUARANTEE) if self._mean is not None else None

    # ------------------------------------------------------------------ sampling and plan
    @property
    def poisson(self) -> bool:
        return self.client_level and self.config.privacy.sampling == "poisson"

    def choose_cohort(self, rng: np.random.Generator, client_ids: list[str], cohort: tuple[str, ...]) -> tuple[str, ...]:
        """Poisson sampling: each client independently with probability ``q = k / N`` (may be empty)."""
        if not self.poisson:
            return cohort
        keep = rng.random(len(client_ids)) < self.sample_rate
        return tuple(cid for cid, inside in zip(client_ids, keep, strict=True) if inside)

    def clip_norm(self, server_states: dict[str, Any]) -> float:
        """``C`` for the next round: the adaptive state's, or the configured one."""
        adaptive = server_states.get(AdaptiveClipStage.name)
        if adaptive is not None:
            return AdaptiveClipStage.clip_norm(adaptive)
        return float(self.config.privacy.clip_norm)

    def extend_plan(self, plan: RoundPlan, state: ServerState) -> RoundPlan:
        """The round plan with the values the DP stages read: ``C``, ``m`` and ``D``."""
        if not self.client_level:
            return plan
        return plan.with_fields(
            DpRound(clip_norm=self.clip_norm(state.server_states), expected_cohort_size=self.expected_cohort_size),
            FixedDenominator(self.denominator),
        )

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        """DP-SGD inside the client (Opacus) when ``privacy.dp_sgd`` is on."""
        if self.dp_sgd is None:
            return options
        return replace(options, dp_sgd=DpSgdOptions(noise_multiplier=self.dp_sgd.noise_multiplier,
                                                    max_grad_norm=self.dp_sgd.max_grad_norm))

    # ------------------------------------------------------------------ accounting
    def resume(self, state: ServerState) -> None:
        """Continue the ledger of a checkpoint (a resumed run)."""
        if self.accountant is not None and LEDGER_KEY in state.totals:
            saved = float(state.totals[LEDGER_KEY]["noise_multiplier"])
            if abs(saved - self.noise_multiplier) > 1e-12 * saved:
                raise ConfigError(
                    f"the checkpoint's noise multiplier is {saved:.6g} but this config gives "
                    f"{self.noise_multiplier:.6g} (target_epsilon is calibrated for "
                    "federation.rounds, which was changed); resume with the run's original "
                    "federation.rounds so the noise added matches the ledger"
                )
            self.accountant.load_state_dict(state.totals[LEDGER_KEY])
        self.sgd_ledger = {c: [list(seg) for seg in segs] for c, segs in state.totals.get(DP_SGD_KEY, {}).items()}

    def stop_reason(self, state: ServerState) -> str | None:
        """Why the next round must not run (budget spent), or None; remembers the reason."""
        p = self.config.privacy
        if self.accountant is None or p.target_epsilon is None:
            return None
        after = self.accountant.epsilon_after(1)
        self._next = (self.accountant.rounds, after)
        if after > p.target_epsilon:
            self.stopped_because = (
                f"privacy budget spent: round {state.round + 1} would take epsilon from "
                f"{self.accountant.epsilon():.4g} to {after:.4g}, past privacy.target_epsilon="
                f"{p.target_epsilon:g} (delta={p.delta:g})"
            )
            return self.stopped_because
        return None

    def after_round(self, state: ServerState, record: dict[str, Any]) -> tuple[ServerState, dict[str, Any]]:
        """One accountant step and the DP-SGD step counts; epsilon into the round record.

        ``state`` is the state ``run_round`` returned; the ledgers are kept here between
        rounds and copied into its ``totals`` so that the checkpoint holds them.
        """
        totals = dict(state.totals)
        info: dict[str, Any] = {}
        if self.accountant is not None:
            cached = self._next
            self.accountant.step(1)
            eps = cached[1] if cached and cached[0] == self.accountant.rounds - 1 else self.accountant.epsilon()
            self._next = None
            info.update(
                epsilon=eps, delta=self.accountant.delta, accountant=self.accountant.kind,
                noise_multiplier=self.noise_multiplier, clip_norm=record_clip(record),
                rounds_accounted=self.accountant.rounds,
            )
            totals[LEDGER_KEY] = self.accountant.state_dict()
        if self.dp_sgd is not None:
            ledger = self.sgd_ledger
            for cid, m in record.get("clients", {}).items():
                q = self.sample_rate_of(cid, int(m.get("batch_size", self.config.federation.batch_size)))
                segs = ledger.setdefault(cid, [])
                if segs and segs[-1][0] == q:
                    segs[-1][1] += int(m.get("steps", 0))
                else:
                    segs.append([q, int(m.get("steps", 0))])
            totals[DP_SGD_KEY] = {c: [list(seg) for seg in segs] for c, segs in ledger.items()}
            per = {cid: self.client_epsilon(ledger[cid]) for cid in record.get("clients", {})}
            info["dp_sgd"] = {"epsilon_max": max(per.values(), default=0.0), "clients": per}
        record = {**record, "privacy": info}
        return replace(state, totals=totals), record

    def sample_rate_of(self, cid: str, batch_size: int) -> float:
        """The Poisson rate of one DP-SGD step of ``cid`` at ``batch_size``."""
        from fedlm.client.dp_sgd import sample_rate

        return sample_rate(self.num_examples[cid], batch_size)

    def client_epsilon(self, history: list[list[float]]) -> float:
        """A client's DP-SGD epsilon over ``[[sample_rate, steps], ...]`` (Opacus RDP accountant)."""
        from fedlm.client.dp_sgd import dp_sgd_epsilon

        cfg = self.dp_sgd
        if cfg is None:
            raise ConfigError("privacy.dp_sgd.enabled is false; there is no per-client epsilon")
        segments = [(float(q), int(n)) for q, n in history]
        return dp_sgd_epsilon(noise_multiplier=cfg.noise_multiplier, segments=segments, delta=cfg.delta)

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """``summary.json["privacy"]``."""
        return {"privacy": self.privacy_summary(run.state)}

    def privacy_summary(self, state: ServerState) -> dict[str, Any]:
        """Epsilon, delta, accountant and how they were obtained."""
        p = self.config.privacy
        out: dict[str, Any] = {"epsilon": None, "delta": None, "accountant": None}
        if self.accountant is not None:
            acc = self.accountant
            out.update(
                level="client",
                epsilon=acc.epsilon(),
                delta=acc.delta,
                accountant=acc.kind,
                noise_multiplier=self.noise_multiplier,
                noise_multiplier_source=self.z_source,
                target_epsilon=p.target_epsilon,
                mode=p.mode,
                sampling=p.sampling,
                sample_rate=self.sample_rate,
                population=self.population,
                expected_cohort_size=self.expected_cohort_size,
                weighting=p.weighting,
                denominator=self.denominator,
                clip_norm=p.clip_norm,
                final_clip_norm=self.clip_norm(state.server_states),
                adaptive_clipping=p.adaptive_clipping,
                sensitivity=sensitivity(p.clip_norm, weighting=p.weighting, max_weight=p.max_weight),
                min_honest_fraction=p.min_honest_fraction,
                rounds_accounted=acc.rounds,
                stopped_early=self.stopped_because is not None,
                stop_reason=self.stopped_because,
                epsilon_by_accountant=self._both_accountants(),
            )
        if self.dp_sgd is not None:
            ledger = self.sgd_ledger
            per = {cid: self.client_epsilon(segs) for cid, segs in sorted(ledger.items())}
            steps = {cid: sum(int(n) for _, n in segs) for cid, segs in ledger.items()}
            dp_sgd = {
                "library": "opacus",
                "accountant": "opacus-rdp",
                "noise_multiplier": self.dp_sgd.noise_multiplier,
                "max_grad_norm": self.dp_sgd.max_grad_norm,
                "delta": self.dp_sgd.delta,
                "epsilon_max": max(per.values(), default=0.0),
                "clients": {cid: {"epsilon": e, "steps": steps[cid]} for cid, e in per.items()},
            }
            out["dp_sgd"] = dp_sgd
            if self.accountant is None:  # sample-level only: the headline is the worst client
                out.update(level="sample", epsilon=dp_sgd["epsilon_max"], delta=self.dp_sgd.delta,
                           accountant="opacus-rdp")
        return out

    def _both_accountants(self) -> dict[str, float | None]:
        """The same ledger under RDP and PLD (PLD has no fixed-size sampling)."""
        acc = self.accountant
        out: dict[str, float | None] = {}
        for kind in ("rdp", "pld"):
            if kind == "pld" and acc.sampling == "fixed":  # type: ignore[union-attr]
                out[kind] = None
                continue
            other = PrivacyAccountant(
                kind, acc.sampling, noise_multiplier=acc.noise_multiplier, delta=acc.delta,  # type: ignore[union-attr]
                sample_rate=acc.sample_rate if acc.sampling == "poisson" else None,  # type: ignore[union-attr]
                cohort_size=acc.cohort_size, population=acc.population,  # type: ignore[union-attr]
                clipped_count_stddev=acc.clipped_count_stddev,  # type: ignore[union-attr]
            )
            other._history = list(acc._history)  # type: ignore[union-attr]
            out[kind] = other.epsilon()
        return out


def record_clip(record: dict[str, Any]) -> float | None:
    """The ``C`` a round's clients clipped to, read from their ``dp_clip`` metrics."""
    for m in record.get("clients", {}).values():
        c = m.get(f"{ClipStage.name}.clip_norm")
        if c is not None:
            return float(c)
    return None


__all__ = ["DP_SGD_KEY", "LEDGER_KEY", "DifferentialPrivacy"]
