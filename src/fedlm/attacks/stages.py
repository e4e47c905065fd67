"""Update-space attacks as client stages of kind "transform" (before clip and encode).

Each stage holds the set of malicious client ids and is a no-op for every other client:
an honest client's ``ClientUpdate`` is returned as the very same object, so its tensors
stay bit-identical. For a malicious client the stage rewrites ``update.tensors`` with one
of the pure functions in :mod:`fedlm.attacks.updates`. Stages are frozen dataclasses and
stateless (state ``None``); randomness is seeded from ``(attack seed, plan.seed, client
id)`` with SHA-256, so reruns and resumes draw the same values.

Colluding attackers (``colluding=True``) share their random draws (the client id in the
seed is replaced by one common tag), so Gaussian and NaN colluders send identical updates.
For deterministic attacks, identical updates need identical inputs: a runtime that holds
a round's raw updates calls :func:`collude_updates` before the client pipeline, so every
colluder starts from the mean of their (backdoored) deltas.

Metrics (per client): ``malicious`` (1.0 or 0.0); for attackers also ``norm_before`` and
``norm_after`` (global L2), or ``nan_entries`` for the NaN attack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedlm.attacks import updates as U
from fedlm.attacks.selection import COLLUDERS, select_malicious, stable_seed
from fedlm.config.attacks import AttackConfig
from fedlm.errors import ConfigError, PipelineError
from fedlm.registry import Registry
from fedlm.stages import ClientUpdate, RoundPlan, Stage, TensorDict


def _generator(
    stage_name: str, seed: int, plan: RoundPlan, client_id: str, colluding: bool
) -> torch.Generator:
    who = COLLUDERS if colluding else client_id
    g = torch.Generator(device="cpu")
    g.manual_seed(stable_seed(stage_name, seed, plan.seed, who))
    return g


def _check_ids(stage: Any) -> None:
    if not isinstance(stage.malicious, frozenset):
        raise ConfigError(
            f"{stage.name}: malicious must be a frozenset of client ids, got "
            f"{type(stage.malicious).__name__}; wrap it in frozenset(...)"
        )


class _UpdateAttack:
    """Shared ``init``/``apply`` of the update attacks: each subclass only says ``attack``.

    ``apply`` runs ``attack(tensors, plan, generator)`` on a malicious client's tensors and
    passes honest clients through untouched; with ``rounds`` set, attackers send their
    (possibly backdoored) update unchanged outside those rounds.
    """

    def init(self) -> None:
        return None

    def apply(self, state: None, value: ClientUpdate, plan: RoundPlan) -> tuple[None, ClientUpdate, dict[str, Any]]:
        if value.client_id not in self.malicious:  # type: ignore[attr-defined]
            return None, value, {"malicious": 0.0}
        rounds = self.rounds  # type: ignore[attr-defined]
        if rounds is not None and plan.round not in rounds:  # an attacker biding its time
            return None, value, {"malicious": 1.0}
        if value.tensors is None:
            raise PipelineError(
                f"{self.name} needs update.tensors but client {value.client_id!r} sent only a "  # type: ignore[attr-defined]
                "payload; put attack stages before any encode stage"
            )
        gen = _generator(self.name, self.seed, plan, value.client_id, self.colluding)  # type: ignore[attr-defined]
        attacked = self.attack(value.tensors, plan, gen)  # type: ignore[attr-defined]
        metrics: dict[str, Any] = {"malicious": 1.0, "norm_before": U.global_norm(value.tensors)}
        if self.kind_of_attack == "nan":  # type: ignore[attr-defined]
            metrics["nan_entries"] = float(sum(int(t.isnan().sum()) for t in attacked.values()))
        else:
            metrics["norm_after"] = U.global_norm(attacked)
        return None, replace(value, tensors=attacked), metrics


@dataclass(frozen=True)
class ModelReplacementStage(_UpdateAttack):
    """Boost the delta by ``gamma = n / eta`` (Bagdasaryan et al. 2020, "How To Backdoor FL").

    ``n = len(plan.cohort)`` and ``eta = server_lr``; with ``boost`` set, ``gamma = boost``.
    Pair it with backdoored local data: the boosted backdoored delta replaces the global
    model after an unweighted average.

    Args:
        malicious: ids of the attacking clients.
        server_lr: the server learning rate eta the attacker assumes.
        boost: explicit gamma (overrides ``n / eta``).
        seed: attack seed (unused: this attack draws nothing; kept for a uniform signature).
        colluding: whether attackers collude (see the module docstring).
        rounds: 1-based rounds in which to attack (None: every round). Bagdasaryan et al.
            boost once, near convergence, so the replaced model is a good one.
    """

    name: ClassVar[str] = "attack_model_replacement"
    kind: ClassVar[str] = "transform"
    kind_of_attack: ClassVar[str] = "model_replacement"

    malicious: frozenset[str]
    server_lr: float = 1.0
    boost: float | None = None
    seed: int = 0
    colluding: bool = False
    rounds: frozenset[int] | None = None

    def __post_init__(self) -> None:
        _check_ids(self)
        if not self.server_lr > 0:
            raise ConfigError(f"{self.name}: server_lr must be > 0, got {self.server_lr!r}")
        if self.boost is not None and not math.isfinite(self.boost):
            raise ConfigError(f"{self.name}: boost must be finite, got {self.boost!r}")

    def gamma(self, plan: RoundPlan) -> float:
        """The boost this round: ``boost`` if set, else ``len(plan.cohort) / server_lr``."""
        if self.boost is not None:
            return float(self.boost)
        return U.replacement_boost(len(plan.cohort), self.server_lr)

    def attack(self, t: TensorDict, p: RoundPlan, g: torch.Generator | None) -> TensorDict:
        return U.scale(t, self.gamma(p))


@dataclass(frozen=True)
class SignFlipStage(_UpdateAttack):
    """Send ``-s * delta`` (sign flipping; Damaskinos et al. 2018, Allen-Zhu et al. 2021).

    Args:
        malicious: ids of the attacking clients.
        s: the scale (1.0 sends exactly the negated update).
        seed: attack seed (unused: deterministic attack).
        colluding: whether attackers collude.
    """

    name: ClassVar[str] = "attack_sign_flip"
    kind: ClassVar[str] = "transform"
    kind_of_attack: ClassVar[str] = "sign_flip"

    malicious: frozenset[str]
    s: float = 1.0
    seed: int = 0
    colluding: bool = False
    rounds: frozenset[int] | None = None

    def __post_init__(self) -> None:
        _check_ids(self)
        if not math.isfinite(self.s):
            raise ConfigError(f"{self.name}: s must be finite, got {self.s!r}")

    def attack(self, t: TensorDict, p: RoundPlan, g: torch.Generator | None) -> TensorDict:
        return U.sign_flip(t, self.s)


@dataclass(frozen=True)
class GaussianStage(_UpdateAttack):
    """Send ``N(0, std^2)`` ("replace") or ``delta + N(0, std^2)`` ("add") (Blanchard et al. 2017).

    Args:
        malicious: ids of the attacking clients.
        std: noise std per coordinate, in the update's units.
        mode: "replace" or "add".
        seed: attack seed, mixed with ``plan.seed`` and the client id (SHA-256).
        colluding: colluders share one noise draw.
    """

    name: ClassVar[str] = "attack_gaussian"
    kind: ClassVar[str] = "transform"
    kind_of_attack: ClassVar[str] = "gaussian"

    malicious: frozenset[str]
    std: float = 1.0
    mode: str = "replace"
    seed: int = 0
    colluding: bool = False
    rounds: frozenset[int] | None = None

    def __post_init__(self) -> None:
        _check_ids(self)
        if not (math.isfinite(self.std) and self.std >= 0):
            raise ConfigError(f"{self.name}: std must be finite and >= 0, got {self.std!r}")
        if self.mode not in ("replace", "add"):
            raise ConfigError(f"{self.name}: mode must be 'replace' or 'add', got {self.mode!r}")

    def attack(self, t: TensorDict, p: RoundPlan, g: torch.Generator | None) -> TensorDict:
        return U.gaussian(t, self.std, generator=g, mode=self.mode
        )


@dataclass(frozen=True)
class LargeNormStage(_UpdateAttack):
    """Scale the delta to global L2 norm ``norm`` (what norm bounding, Sun et al. 2019, stops).

    Args:
        malicious: ids of the attacking clients.
        norm: the L2 norm of the sent update.
        seed: attack seed (unused: deterministic attack).
        colluding: whether attackers collude.
    """

    name: ClassVar[str] = "attack_large_norm"
    kind: ClassVar[str] = "transform"
    kind_of_attack: ClassVar[str] = "large_norm"

    malicious: frozenset[str]
    norm: float = 100.0
    seed: int = 0
    colluding: bool = False
    rounds: frozenset[int] | None = None

    def __post_init__(self) -> None:
        _check_ids(self)
        if not (math.isfinite(self.norm) and self.norm > 0):
            raise ConfigError(f"{self.name}: norm must be finite and > 0, got {self.norm!r}")

    def attack(self, t: TensorDict, p: RoundPlan, g: torch.Generator | None) -> TensorDict:
        return U.scale_to_norm(t, self.norm)


@dataclass(frozen=True)
class NaNStage(_UpdateAttack):
    """Set a share ``fraction`` of each tensor's entries to NaN (what validation must reject).

    Args:
        malicious: ids of the attacking clients.
        fraction: share of entries per tensor, in (0, 1]; at least one entry per tensor.
        seed: attack seed for the positions, mixed with ``plan.seed`` and the client id.
        colluding: colluders share the positions.
    """

    name: ClassVar[str] = "attack_nan"
    kind: ClassVar[str] = "transform"
    kind_of_attack: ClassVar[str] = "nan"

    malicious: frozenset[str]
    fraction: float = 1.0
    seed: int = 0
    colluding: bool = False
    rounds: frozenset[int] | None = None

    def __post_init__(self) -> None:
        _check_ids(self)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{self.name}: fraction must be in (0, 1], got {self.fraction!r}")

    def attack(self, t: TensorDict, p: RoundPlan, g: torch.Generator | None) -> TensorDict:
        return U.insert_nan(t, self.fraction, generator=g
        )


def _default_registry() -> Registry[Stage]:
    reg: Registry[Stage] = Registry("attack")
    for cls in (ModelReplacementStage, SignFlipStage, GaussianStage, LargeNormStage, NaNStage):
        reg.register(cls.kind_of_attack, cls)
    return reg


# Update-space attacks by their ``AttackConfig.kind``.
ATTACKS: Registry[Stage] = _default_registry()


def collude_updates(
    updates: Sequence[ClientUpdate], malicious: frozenset[str]
) -> list[ClientUpdate]:
    """Give every malicious update in ``updates`` the mean of the malicious deltas.

    Honest updates are returned as the same objects. Call it on a round's raw updates
    (``tensors`` set) before the client pipeline when attackers collude.
    """
    bad = [u for u in updates if u.client_id in malicious]
    if not bad:
        return list(updates)
    for u in bad:
        if u.tensors is None:
            raise PipelineError(
                f"collude_updates needs tensors; client {u.client_id!r} has only a payload"
            )
    shared = U.collude([u.tensors for u in bad if u.tensors is not None])
    return [
        replace(u, tensors={k: t.clone() for k, t in shared.items()})
        if u.client_id in malicious
        else u
        for u in updates
    ]


def malicious_clients(config: AttackConfig, client_ids: Sequence[str]) -> frozenset[str]:
    """The malicious ids that ``config`` describes among ``client_ids`` (empty when off)."""
    if not config.enabled:
        return frozenset()
    return select_malicious(
        client_ids, fraction=config.fraction, ids=config.client_ids, seed=config.seed
    )


def attack_stages(
    config: AttackConfig, client_ids: Sequence[str], *, server_lr: float = 1.0
) -> list[Stage]:
    """The client "transform" stages for ``config`` (empty for "none" and "backdoor").

    Args:
        config: the attack section.
        client_ids: every client of the federation.
        server_lr: the server optimizer's learning rate, used by model replacement unless
            ``config.server_lr`` is set.
    """
    if config.kind not in ATTACKS:
        return []
    bad = malicious_clients(config, client_ids)
    # Only values the config sets are passed, so unset ones take the stage's own default.
    per_kind: dict[str, dict[str, Any]] = {
        "model_replacement": {
            "server_lr": config.server_lr if config.server_lr is not None else server_lr,
            "boost": config.boost,
        },
        "sign_flip": {"s": config.boost},
        "gaussian": {"std": config.noise_std, "mode": config.noise_mode},
        "large_norm": {"norm": config.norm},
        "nan": {"fraction": config.nan_fraction},
    }
    kwargs = {k: v for k, v in per_kind[config.kind].items() if v is not None}
    rounds = frozenset(config.rounds) if config.rounds is not None else None
    return [
        ATTACKS.create(
            config.kind, malicious=bad, seed=config.seed, colluding=config.colluding,
            rounds=rounds, **kwargs,
        )
    ]
