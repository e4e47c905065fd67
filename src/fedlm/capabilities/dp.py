"""The differential-privacy capability: secret sampling, plan values, stages, accounting, audit.

The math lives in :mod:`fedlm.privacy` (clipping, noise, accountants, the discrete
mechanisms, canary clients) and in :mod:`fedlm.client.dp_sgd`; this module plugs it into
the round and the loop:

* before training: :func:`~fedlm.privacy.plan.plan_dp` fixes the public values (``q``,
  ``D``, the sensitivity after encoding, ``z`` or the discrete mechanism's parameters) and
  :func:`~fedlm.config.privacy.check_trust` refuses client noise without secure aggregation;
* each round: the cohort from the run's secret key (:mod:`fedlm.privacy.sampling`), the
  plan's ``DpRound``, ``FixedDenominator`` and ``DistributedDpRound``, DP-SGD's options
  (with secret noise seeds), and after the round one ledger step at the noise that reached
  the sum (survivors' shares under SecAgg+), epsilon into the record, the full record into
  ``private/rounds.jsonl`` and its public form into ``metrics.jsonl``
  (:mod:`fedlm.privacy.records`);
* between rounds: whether one more round would spend more than ``target_epsilon``;
* at the end: ``summary.json["privacy"]``, with the one-run audit's bound beside epsilon.

The key, the ledgers, the DP-SGD step counts and the canaries' scores ride in
``ServerState.totals`` so that a checkpoint holds them and a resumed run continues them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.client.local import DpSgdOptions, TrainOptions
from fedlm.config.privacy import check_trust
from fedlm.config.schema import ExperimentConfig
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, MeanOffer, MeanRank
from fedlm.engine.checkpoint import ServerState
from fedlm.engine.simulation import planned_cohort_size
from fedlm.errors import ConfigError
from fedlm.privacy import sampling as secret
from fedlm.privacy.canary_clients import Canaries, CanaryStage, RingCanaryStage
from fedlm.privacy.disclosure import audit_result, caveats, epsilons_by_accountant
from fedlm.privacy.distributed.stages import (
    DistributedDecodeStage,
    DistributedDpRound,
    DistributedEncodeStage,
    honest_shares,
)
from fedlm.privacy.ledgers import RELEASE, DpLedgers
from fedlm.privacy.plan import DISCRETE, DpPlan, plan_dp
from fedlm.privacy.records import PrivateRounds, public_record
from fedlm.privacy.secagg.stages import UNMASK_STAGE, layout
from fedlm.privacy.stages import (
    AdaptiveClipStage,
    ClipStage,
    DpMeanStage,
    DpRound,
    dp_fedavg_stages,
)
from fedlm.seeds import derive_seed
from fedlm.stages import GlobalAtStart, RoundPlan, Stage, TensorDict

LEDGER_KEY = RELEASE  # in ServerState.totals: the release ledger (Gaussian modes); see DpLedgers.totals
KEY_KEY = "privacy_secret_key"  # hex; the run's secret (cohorts, canaries, DP-SGD seeds)
AUDIT_KEY = "privacy_audit_scores"
DP_SGD_KEY = "dp_sgd_steps"  # in ServerState.totals: {client_id: [[sample_rate, steps], ...]}
_ROTATION_TAG = 0xDD9  # public rotation seed: derive_seed(federation.seed, round, tag)


class PrivacyWarning(UserWarning):
    """A setting that weakens what the reported epsilon means (Opacus warns the same way)."""


class DifferentialPrivacy(Capability):
    """Client-level DP-FedAvg, sample-level DP-SGD and the client-level one-run audit.

    Args:
        config: the experiment; ``privacy.enabled``, ``privacy.dp_sgd.enabled`` or ``privacy.audit.enabled``.
        data: the federated data (population and example counts).
        shapes: the trainable tensors' shapes (the update's dimension).

    Raises:
        ConfigError: client noise without secure aggregation, ``delta >= 1/N``, or an
            unreachable ``target_epsilon``.
    """

    name = "privacy"
    plan_fields = (DpRound, FixedDenominator, DistributedDpRound)

    @classmethod
    def build(cls, ctx: EngineContext) -> DifferentialPrivacy | None:
        p = ctx.config.privacy
        on = p.enabled or p.dp_sgd.enabled or p.audit.enabled
        return cls(ctx.config, ctx.data, shapes=ctx.model.shapes()) if on else None

    def __init__(self, config: ExperimentConfig, data: Any, *, shapes: dict[str, Any] | None = None) -> None:
        p = config.privacy
        self.config = config
        self.client_level = p.enabled
        self.dp_sgd = p.dp_sgd if p.dp_sgd.enabled else None
        self.client_ids = sorted(data.clients)
        self.population = len(self.client_ids)
        self.cohort_size = planned_cohort_size(config, self.population)
        self.num_examples = {cid: len(c.train) for cid, c in data.clients.items()}
        self.shapes = layout(shapes or {})
        self.dim = sum(math.prod(s) for s in self.shapes.values())
        self.run_dir: Path | None = None
        self.private: PrivateRounds | None = None
        self._key: bytes | None = None
        self._next_round = 1
        self._start: TensorDict | None = None  # the global tensors the current round began from
        self.stopped_because: str | None = None
        self.sgd_ledger: dict[str, list[list[float]]] = {}  # DP-SGD: {client: [[q, steps], ...]}
        self.plan: DpPlan | None = None
        self.ledgers: DpLedgers | None = None
        self._client_stages: list[Stage] = []
        self._server_stages: list[Stage] = []
        self._mean: DpMeanStage | None = None
        if self.client_level:
            check_trust(config)
            p.check_population(self.population)
            self.plan = plan_dp(config, population=self.population, cohort_size=self.cohort_size, dim=self.dim)
            self._build_mechanism()
        self.canaries = self._build_canaries() if p.audit.enabled else None
        self.audit_scores = np.zeros(p.audit.canaries) if self.canaries is not None else None
        for why in caveats(config, self.plan, warn_only=True):
            warnings.warn(why, PrivacyWarning, stacklevel=2)

    # ------------------------------------------------------------------ build
    def _build_mechanism(self) -> None:
        p, plan = self.config.privacy, self.plan
        self.ledgers = DpLedgers(plan)
        if plan.discrete is None:
            self._client_stages, self._server_stages = dp_fedavg_stages(
                p, plan.noise_multiplier, expected_cohort_size=float(self.cohort_size), secret_seed=p.noise_seed,
                encoding_margin=plan.margin)
        else:
            from fedlm.engine.pipelines import upload_codec

            self._client_stages = [ClipStage(clip_norm=p.clip_norm),
                                   DistributedEncodeStage(codec=upload_codec(self.config), secret_seed=p.noise_seed)]
            self._server_stages = [DistributedDecodeStage(shapes=self.shapes)]
        self._mean = DpMeanStage(clip_norm=p.clip_norm, weighting=p.weighting, max_weight=p.max_weight,
                                 reclip=p.mode == "central")  # re-clipping a noise share would strip its noise

    def _build_canaries(self) -> Canaries:
        p, fed = self.config.privacy, self.config.federation
        q = self.cohort_size / self.population
        rate = (1.0 if p.sampling == "none" else q) if self.client_level else q
        canaries = Canaries(lambda: self.key, count=p.audit.canaries, shapes=self.shapes, norm=p.clip_norm, rate=rate)
        if self.client_level and p.mode in DISCRETE:
            self._server_stages.append(RingCanaryStage(canaries))
            return canaries
        if self.client_level:
            weight = math.ceil(p.max_weight) if p.weighting == "capped" else 1
        else:
            weight = int(np.median(list(self.num_examples.values()))) if fed.weighting == "examples" else 1
            if self.config.secure_aggregation.enabled:
                weight = min(weight, self.config.secure_aggregation.max_weight)
        self._server_stages.append(CanaryStage(canaries, weight=max(1, weight)))
        return canaries

    def client_stages(self) -> list[Stage]:
        return list(self._client_stages)

    def server_stages(self) -> list[Stage]:
        return list(self._server_stages)

    def mean(self) -> MeanOffer | None:
        """DP's bounded-sensitivity mean over a public denominator (outranks any other mean)."""
        return MeanOffer(self._mean, MeanRank.GUARANTEE) if self._mean is not None else None

    # ------------------------------------------------------------------ the secret
    @property
    def key(self) -> bytes:
        """The run's secret: from the checkpoint, the run directory, or fresh from the OS."""
        if self._key is None:
            found = secret.load_key(self.run_dir) if self.run_dir is not None else None
            self._key = found or secret.new_key()
        return self._key

    def open_run(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        if self.client_level or self.canaries is not None:
            self.private = PrivateRounds(self.run_dir)

    # ------------------------------------------------------------------ sampling and plan
    def adopt(self, state: ServerState) -> None:
        self._next_round = state.round + 1

    def choose_cohort(self, rng: np.random.Generator, client_ids: list[str], cohort: tuple[str, ...]) -> tuple[str, ...]:
        """The round's cohort: Poisson (rate ``q``) or ``k`` of ``N``, from the secret key.

        With ``privacy.sampling_key: public`` the engine's seeded generator draws it instead
        (reproducible from ``config.yaml``; no amplification is then claimed).
        """
        p = self.config.privacy
        if not self.client_level or p.sampling == "none":
            return cohort
        if p.sampling_key == "public":
            if p.sampling == "poisson":
                keep = rng.random(len(client_ids)) < self.plan.sample_rate
                return tuple(cid for cid, inside in zip(client_ids, keep, strict=True) if inside)
            return cohort
        ids = sorted(client_ids)  # the draw must not depend on how the data lists its clients
        if p.sampling == "poisson":
            return secret.poisson_cohort(self.key, self._next_round, ids, self.plan.sample_rate)
        return secret.fixed_cohort(self.key, self._next_round, ids, self.cohort_size)

    def clip_norm(self, server_states: dict[str, Any]) -> float:
        """``C`` for the next round: the adaptive state's, or the configured one."""
        adaptive = server_states.get(AdaptiveClipStage.name)
        if adaptive is not None:
            return AdaptiveClipStage.clip_norm(adaptive)
        return float(self.config.privacy.clip_norm)

    def extend_plan(self, plan: RoundPlan, state: ServerState) -> RoundPlan:
        """The round plan with the values the DP stages read: ``C``, ``m``, ``D`` and the discrete parameters."""
        start = plan.get(GlobalAtStart)
        self._start = start.tensors if start is not None else state.global_state
        if not self.client_level:
            return plan
        fields: list[Any] = [
            DpRound(clip_norm=self.clip_norm(state.server_states), expected_cohort_size=float(self.cohort_size)),
            FixedDenominator(self.plan.denominator),
        ]
        d = self.plan.discrete
        if d is not None:
            shares = honest_shares(len(plan.cohort), self.config.privacy.min_honest_fraction)
            fields.append(DistributedDpRound(
                mechanism=d.mechanism, clip=d.clip, dim=d.dim, gamma=d.gamma, noise_stddev=d.noise_stddev,
                bits=d.bits, beta=d.beta, shares=shares,
                rotation_seed=derive_seed(self.config.federation.seed, plan.round, _ROTATION_TAG)))
        return plan.with_fields(*fields)

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        """DP-SGD inside the client (Opacus), its batches and noise seeded from the secret key.

        The engine's seed derives from ``federation.seed``, which ``config.yaml`` shows: with
        it anyone could regenerate DP-SGD's noise and Poisson batches.
        """
        if self.dp_sgd is None:
            return options
        seed = secret.derived_seed(self.key, "dp-sgd", plan.round, client_id)
        return replace(options, seed=seed, dp_sgd=DpSgdOptions(noise_multiplier=self.dp_sgd.noise_multiplier,
                                                               max_grad_norm=self.dp_sgd.max_grad_norm))

    # ------------------------------------------------------------------ accounting
    def resume(self, state: ServerState) -> None:
        """Continue the key, the ledgers and the audit scores of a checkpoint (a resumed run)."""
        t = state.totals
        if KEY_KEY in t:
            key = bytes.fromhex(t[KEY_KEY])
            kept = secret.load_key(self.run_dir) if self.run_dir is not None else None
            if kept is not None and kept != key:
                raise ConfigError(f"{self.run_dir}/private/{secret.KEY_FILE} differs from the checkpoint's key; "
                                  "restore the run directory's private/ folder")
            self._key = key
        if self.ledgers is not None:
            self.ledgers.load(t)
        if self.audit_scores is not None and AUDIT_KEY in t:
            self.audit_scores = np.asarray(t[AUDIT_KEY], dtype=np.float64)
        self.sgd_ledger = {c: [list(seg) for seg in segs] for c, segs in t.get(DP_SGD_KEY, {}).items()}
        if self.private is not None:
            self.private.truncate_after(state.round)

    def stop_reason(self, state: ServerState) -> str | None:
        """Why the next round must not run (budget spent), or None; remembers the reason."""
        p = self.config.privacy
        if not self.client_level or p.target_epsilon is None:
            return None
        after = self.ledgers.epsilon_after_next()
        if after > p.target_epsilon:
            self.stopped_because = (
                f"privacy budget spent: round {state.round + 1} would take epsilon from "
                f"{self.ledgers.epsilon():.4g} to {after:.4g}, past privacy.target_epsilon="
                f"{p.target_epsilon:g} (delta={p.delta:g})"
            )
            return self.stopped_because
        return None

    def _account(self, record: dict[str, Any]) -> dict[str, Any]:
        """One ledger step at the noise that reached this round's sum (SecAgg+'s survivors)."""
        figs = (record.get("server") or {}).get(UNMASK_STAGE)
        done = isinstance(figs, dict) and not figs.get("aborted")
        info = self.ledgers.step(len(record.get("cohort") or []), int(figs["survivors"]) if done else None)
        return {**info, "clip_norm": record_clip(record)}

    def after_round(self, state: ServerState, record: dict[str, Any]) -> tuple[ServerState, dict[str, Any]]:
        """Account the round, score the canaries; the full record goes private, its public form on.

        ``state`` is the state ``run_round`` returned; the ledgers are kept here between
        rounds and copied into its ``totals`` so that the checkpoint holds them.
        """
        totals = dict(state.totals)
        info: dict[str, Any] = {}
        if self.client_level:
            info.update(self._account(record))
            totals.update(self.ledgers.totals())
        if self.dp_sgd is not None:
            info["dp_sgd"] = self._dp_sgd_step(record)
            totals[DP_SGD_KEY] = {c: [list(seg) for seg in segs] for c, segs in self.sgd_ledger.items()}
        if self.canaries is not None and self._start is not None:
            step = {k: state.global_state[k] - self._start[k] for k in self.shapes}
            self.audit_scores = self.canaries.score_step(step, self.audit_scores)
            totals[AUDIT_KEY] = [float(s) for s in self.audit_scores]
        if self.client_level or self.dp_sgd is not None or self.canaries is not None:
            totals[KEY_KEY] = self.key.hex()
            if self.run_dir is not None:
                secret.save_key(self.run_dir, self.key)
        record = {**record, "privacy": info}
        if self.client_level:
            if self.private is not None:
                self.private.append(record)
            record = public_record(record, self.client_ids)
        return replace(state, totals=totals), record

    def _dp_sgd_step(self, record: dict[str, Any]) -> dict[str, Any]:
        ledger = self.sgd_ledger
        for cid, m in record.get("clients", {}).items():
            q = self.sample_rate_of(cid, int(m.get("batch_size", self.config.federation.batch_size)))
            segs = ledger.setdefault(cid, [])
            if segs and segs[-1][0] == q:
                segs[-1][1] += int(m.get("steps", 0))
            else:
                segs.append([q, int(m.get("steps", 0))])
        per = {cid: self.client_epsilon(ledger[cid]) for cid in record.get("clients", {})}
        return {"epsilon_max": max(per.values(), default=0.0), "clients": per}

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

    # ------------------------------------------------------------------ summary
    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """``summary.json["privacy"]``."""
        return {"privacy": self.privacy_summary(run.state)}

    def privacy_summary(self, state: ServerState) -> dict[str, Any]:
        """Epsilon, delta, how they were obtained, what they cover, and the audited bound."""
        p = self.config.privacy
        out: dict[str, Any] = {"epsilon": None, "delta": None, "accountant": None}
        if self.client_level:
            plan, led = self.plan, self.ledgers
            out.update(plan.summary())
            out.update(
                level="client", epsilon=led.epsilon(), delta=plan.delta, accountant=led.kind,
                epsilon_server=led.epsilon_server(), noise_multiplier=plan.noise_multiplier,
                noise_multiplier_source=plan.noise_source, target_epsilon=p.target_epsilon, sampling_key=p.sampling_key,
                weighting=p.weighting, clip_norm=p.clip_norm, final_clip_norm=self.clip_norm(state.server_states),
                adaptive_clipping=p.adaptive_clipping, rounds_accounted=led.rounds,
                stopped_early=self.stopped_because is not None, stop_reason=self.stopped_because,
                epsilon_by_accountant=epsilons_by_accountant(led.accountant) if led.accountant else
                {"rdp": led.epsilon()},
                caveats=caveats(self.config, plan),
            )
        if self.dp_sgd is not None:
            ledger = self.sgd_ledger
            per = {cid: self.client_epsilon(segs) for cid, segs in sorted(ledger.items())}
            steps = {cid: sum(int(n) for _, n in segs) for cid, segs in ledger.items()}
            clients = {cid: {"epsilon": e, "steps": steps[cid]} for cid, e in per.items()} if not self.client_level else None
            dp_sgd = {"library": "opacus", "accountant": "opacus-rdp", "noise_multiplier": self.dp_sgd.noise_multiplier,
                      "max_grad_norm": self.dp_sgd.max_grad_norm, "delta": self.dp_sgd.delta,
                      "epsilon_max": max(per.values(), default=0.0), "clients": clients}
            out["dp_sgd"] = dp_sgd
            if not self.client_level:  # sample-level only: the headline is the worst client
                out.update(level="sample", epsilon=dp_sgd["epsilon_max"], delta=self.dp_sgd.delta,
                           accountant="opacus-rdp")
        if self.canaries is not None:
            out["audit"] = audit_result(self.audit_scores, self.canaries.included(), epsilon=out["epsilon"],
                                        delta=self.plan.delta if self.plan else p.delta,
                                        confidence=p.audit.confidence, run_dir=self.run_dir)
        return out


def record_clip(record: dict[str, Any]) -> float | None:
    """The ``C`` a round's clients clipped to, read from their ``dp_clip`` metrics."""
    for m in record.get("clients", {}).values():
        c = m.get(f"{ClipStage.name}.clip_norm")
        if c is not None:
            return float(c)
    return None


__all__ = ["DP_SGD_KEY", "KEY_KEY", "LEDGER_KEY", "DifferentialPrivacy", "PrivacyWarning"]
