"""Config of secure aggregation (SecAgg+, Bell et al. 2020) and of its quantisation.

No torch here. The protocol itself lives in ``fedlm.privacy.secagg``; this model only
holds the knobs and rejects combinations that cannot work.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.errors import ConfigError

# The uploads of a round, in order (fedlm.privacy.secagg.server.PHASES re-exports it).
# "consistency" (Bonawitz et al. 2017's ConsistencyCheck) runs when the clients sign.
PHASES: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmasking")


# The safety bound each client enforces (derivation in fedlm.privacy.secagg.graph's docstring);
# here so that config validation and the protocol use one function.
def corrupt_neighbours(k: int, *, corrupt_fraction: float) -> int:
    """c = floor(gamma k): the corrupt neighbours a client of degree k is assumed to have."""
    return math.floor(corrupt_fraction * k + 1e-9)  # 1e-9: 0.2 * 10 is 2, not 1.999...


def min_safe_threshold(k: int, *, corrupt_fraction: float = 0.0) -> int:
    """The smallest t with 2t > k + c (module docstring): floor((k + c) / 2) + 1.

    Args:
        k: the client's degree (number of share holders).
        corrupt_fraction: gamma in [0, 1), the fraction of a client's neighbours assumed
            to collude with a malicious server.

    Returns:
        t_min; at most k for every gamma < 1. A threshold below it lets a lying server
        that controls c of a client's neighbours unmask that client's input.
    """
    c = corrupt_neighbours(k, corrupt_fraction=corrupt_fraction)
    return (k + c) // 2 + 1



class SecAggConfig(BaseModel):
    """Secure aggregation: the server learns only the (weighted) sum of the cohort.

    Defaults: b = 16 quantisation bits and m = 32 modulus bits, so each masked value is
    one uint32 (upload 1.0x fp32) and the sum has 16 bits of headroom (up to 65,537
    clients at weight 1). The neighbour degree and Shamir threshold follow
    ``fedlm.privacy.secagg.graph`` unless set here. A threshold below the safe minimum for
    ``corrupt_fraction`` (2t > k + floor(corrupt_fraction k), Bonawitz et al. 2017 and
    Bell et al. 2020) is refused here, by the server, and by every client on its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="mask client updates with SecAgg+")
    bits: int = Field(
        default=16,
        description="quantisation levels 2^bits per coordinate, in [1, 32]",
    )
    modulus_bits: int = Field(
        default=32,
        description="sums are taken mod 2^modulus_bits, in [2, 64]; ceil(m/8) bytes per value on the wire; "
        "with privacy.mode ddgauss/skellam it is also the mechanism's ring Z_{2^b} (at most 62)",
    )
    clip_range: float = Field(
        default=1.0,
        description="each coordinate is clipped to [-clip_range, clip_range] before quantisation",
    )
    max_weight: int = Field(
        default=1,
        description="largest integer weight a client may give its update (1: plain sum)",
    )
    threshold: int | None = Field(
        default=None,
        description="Shamir threshold t (shares needed per secret); needs neighbours set and "
        "t >= floor((k + floor(corrupt_fraction k)) / 2) + 1; None: the smallest safe t",
    )
    threshold_fraction: float | None = Field(
        default=None,
        description="t = floor(fraction * k) + 1, fraction in [(1 + corrupt_fraction) / 2, 1]; "
        "None: the smallest safe t",
    )
    corrupt_fraction: float = Field(
        default=0.2,
        description="assumed fraction of a client's neighbours that collude with a malicious "
        "server, in [0, 1); the threshold must exceed (k + floor(corrupt_fraction k)) / 2",
    )
    dropout_tolerance: float = Field(
        default=0.0,
        description="fraction of a client's neighbours that may drop with the round still "
        "finishing, in [0, 1); needs corrupt_fraction + 2 dropout_tolerance < 1",
    )
    neighbours: int | None = Field(
        default=None,
        description="degree k of the neighbour graph; None: complete for n <= 31, else about 6 log2(n)",
    )
    dropout_rate: float = Field(
        default=0.0,
        description="simulation only: chance in [0, 1) that a client drops at a random phase",
    )
    phase_dropout: dict[str, float] = Field(
        default_factory=dict,
        description="simulation only: phase -> fraction of the cohort that goes silent before "
        "sending that phase's upload (exact count, seeded); phases: " + ", ".join(PHASES),
    )
    seed: int | None = Field(
        default=None,
        description="simulation only: seeds the graph, injected dropouts and rounding noise "
        "(in fedlm run, None derives it from federation.seed and the round)",
    )

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not 1 <= v <= 32:
            raise ValueError(f"secure_aggregation.bits={v} must be in [1, 32]; 16 is the usual choice")
        return v

    @field_validator("modulus_bits")
    @classmethod
    def _modulus_bits(cls, v: int) -> int:
        if not 2 <= v <= 64:
            raise ValueError(f"secure_aggregation.modulus_bits={v} must be in [2, 64]; 32 gives uint32 values")
        return v

    @field_validator("clip_range")
    @classmethod
    def _clip(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"secure_aggregation.clip_range={v} must be a positive finite number")
        return v

    @field_validator("max_weight")
    @classmethod
    def _max_weight(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"secure_aggregation.max_weight={v} must be >= 1 (1 means unweighted)")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: int | None) -> int | None:
        if v is not None and v < 2:
            raise ValueError(
                f"secure_aggregation.threshold={v} must be >= 2: t=1 lets any one neighbour unmask a client"
            )
        return v

    @field_validator("threshold_fraction")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.5 <= v <= 1.0:
            raise ValueError(
                f"secure_aggregation.threshold_fraction={v} must be in [0.5, 1]; below 0.5 a server that lies "
                "about dropouts could unmask a client"
            )
        return v

    @field_validator("corrupt_fraction", "dropout_tolerance")
    @classmethod
    def _unit_interval(cls, v: float, info: Any) -> float:
        if not (0.0 <= v < 1.0):
            raise ValueError(f"secure_aggregation.{info.field_name}={v} must be in [0, 1)")
        return v

    @field_validator("neighbours")
    @classmethod
    def _neighbours(cls, v: int | None) -> int | None:
        if v is not None and v < 2:
            raise ValueError(f"secure_aggregation.neighbours={v} must be >= 2 (or None for the default)")
        return v

    @field_validator("dropout_rate")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"secure_aggregation.dropout_rate={v} must be in [0, 1)")
        return v

    @field_validator("phase_dropout")
    @classmethod
    def _phase_dropout(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(PHASES))
        if unknown:
            raise ValueError(
                f"secure_aggregation.phase_dropout has phases {unknown}; allowed: {list(PHASES)}"
            )
        bad = {p: f for p, f in v.items() if not 0.0 <= f < 1.0}
        if bad or sum(v.values()) >= 1.0:
            raise ValueError(
                f"secure_aggregation.phase_dropout fractions must be in [0, 1) and sum to less than 1, got {v}"
            )
        return v

    @model_validator(mode="after")
    def _cross(self) -> SecAggConfig:
        if self.threshold is not None and self.threshold_fraction is not None:
            raise ValueError(
                "secure_aggregation.threshold and secure_aggregation.threshold_fraction are both set; set only one of them"
            )
        if (
            self.threshold is not None
            and self.neighbours is not None
            and self.threshold > self.neighbours
        ):
            raise ValueError(
                f"secure_aggregation.threshold={self.threshold} exceeds secure_aggregation.neighbours={self.neighbours}; "
                "a client only has that many share holders"
            )
        self._check_safety()
        if self.max_cohort() < 2:
            raise ValueError(
                f"secure_aggregation.modulus_bits={self.modulus_bits} leaves no headroom for bits={self.bits} and "
                f"max_weight={self.max_weight}; raise modulus_bits or lower bits"
            )
        return self

    def _check_safety(self) -> None:
        """Refuse thresholds a lying server could exploit, and unreachable dropout targets."""
        gamma, delta = self.corrupt_fraction, self.dropout_tolerance
        if gamma + 2 * delta >= 1.0:
            raise ValueError(
                f"secure_aggregation.corrupt_fraction={gamma} and dropout_tolerance={delta}: no threshold is "
                "both safe (t > k (1 + corrupt_fraction) / 2) and tolerant (t <= k (1 - dropout_tolerance)) "
                "unless corrupt_fraction + 2 dropout_tolerance < 1; lower one of them"
            )
        f = self.threshold_fraction
        if f is not None and f < (1 + gamma) / 2:
            raise ValueError(
                f"secure_aggregation.threshold_fraction={f} is below (1 + corrupt_fraction) / 2 = "
                f"{(1 + gamma) / 2:g} for corrupt_fraction={gamma}: a lying server with that many colluding "
                "neighbours could unmask a client; raise threshold_fraction or leave it unset (the smallest "
                "safe threshold)"
            )
        if f is not None and delta > 0 and f + delta >= 1:
            raise ValueError(
                f"secure_aggregation.threshold_fraction={f} leaves fewer than dropout_tolerance={delta} of the "
                f"neighbours free to drop; use threshold_fraction < {1 - delta:g} or lower dropout_tolerance"
            )
        t = self.threshold
        if t is None:
            return
        if self.neighbours is None:
            raise ValueError(
                f"secure_aggregation.threshold={t} is set without secure_aggregation.neighbours: the degree "
                "then grows with the cohort (k = 34 at n = 50) and a fixed t becomes unsafe (a lying server "
                "could unmask a client once 2t <= k); set secure_aggregation.neighbours too, or leave "
                "threshold unset for the smallest safe one"
            )
        k = 2 * ((self.neighbours + 1) // 2)  # the Harary graph rounds an odd degree up
        need = min_safe_threshold(k, corrupt_fraction=gamma)
        if t < need:
            raise ValueError(
                f"secure_aggregation.threshold={t} is unsafe for secure_aggregation.neighbours={self.neighbours} "
                f"(degree {k}) and corrupt_fraction={gamma}: a lying server that controls "
                f"{corrupt_neighbours(k, corrupt_fraction=gamma)} of a client's {k} neighbours could collect "
                f"both shares of its secrets; set threshold >= {need}, or leave it unset"
            )
        free = k - t
        if free < math.floor(delta * k + 1e-9):
            raise ValueError(
                f"secure_aggregation.threshold={t} tolerates {free} dropped neighbours of {k}, fewer than "
                f"dropout_tolerance={delta} asks; lower threshold (>= {need}) or dropout_tolerance"
            )

    def max_cohort(self) -> int:
        """Largest cohort whose weighted sum cannot wrap mod 2^modulus_bits."""
        return ((1 << self.modulus_bits) - 1) // (self.max_weight * ((1 << self.bits) - 1))


def check_composition(config: Any) -> None:
    """Reject what cannot follow secure aggregation in a whole experiment config.

    The server sees only the cohort's sum, so anything that reads one client's update
    is impossible: robust aggregators other than client-side norm bounding, and upload
    codecs that are not linear (top-k: each client keeps different coordinates).

    Args:
        config: an ``ExperimentConfig`` with ``secure_aggregation.enabled``.

    Raises:
        ConfigError: naming the field, the value and what composes instead.
    """
    sa, fed, comp = config.secure_aggregation, config.federation, config.compression
    config.robust.check_secure_aggregation(sa.enabled)
    if not comp.secagg_compatible:
        raise ConfigError(
            f"compression.upload={comp.upload!r} (params {dict(comp.upload_params)}) needs each "
            "client's update to decode, which secure aggregation hides; what composes: fp32, "
            "fp16, bf16, or int8/int4 with a shared compression.upload_params.fixed_scale"
        )
    k = fed.clients_per_round
    if k is not None and k < 3:
        raise ConfigError(
            f"secure_aggregation needs federation.clients_per_round >= 3 (a Shamir threshold of "
            f"at least 2 among each client's neighbours), got {k}"
        )
    if k is not None and k > sa.max_cohort():
        raise ConfigError(
            f"federation.clients_per_round={k} exceeds the {sa.max_cohort()} clients whose sum "
            f"fits in secure_aggregation.modulus_bits={sa.modulus_bits} at bits={sa.bits} and "
            f"max_weight={sa.max_weight}; raise modulus_bits or lower bits or max_weight"
        )
    privacy = getattr(config, "privacy", None)
    dp = privacy is not None and privacy.enabled
    if dp:
        from fedlm.config.privacy import DISCRETE_MODES, check_trust

        check_trust(config)
        if privacy.mode in DISCRETE_MODES and sa.bits != 1:
            raise ConfigError(
                f"privacy.mode={privacy.mode!r} masks ring elements, not quantised floats, so SecAgg+'s float "
                f"quantisation (secure_aggregation.bits={sa.bits}) does not apply; every client checks that "
                "clients x (2^bits - 1) fits the ring, which must count clients only: set secure_aggregation.bits=1"
            )
        ring_too_small = sa.modulus_bits > 62 or (k is not None and 2 ** (sa.modulus_bits - 1) <= k)
        if privacy.mode in DISCRETE_MODES and ring_too_small:
            raise ConfigError(
                f"privacy.mode={privacy.mode!r} sums integers in SecAgg+'s ring of secure_aggregation."
                f"modulus_bits={sa.modulus_bits} bits, which must be at most 62 and leave room for the "
                f"rounding of {k} clients (2^(bits-1) > clients_per_round); use e.g. modulus_bits=20 or 32"
            )
    if dp and privacy.adaptive_clipping:
        raise ConfigError(
            "privacy.adaptive_clipping reads each client's clipped/unclipped bit, which secure "
            "aggregation hides; set a fixed privacy.clip_norm (privacy.adaptive_clipping=false) "
            "or turn secure aggregation off"
        )
    if dp and privacy.weighting == "capped" and (privacy.max_weight or 0) > sa.max_weight:
        raise ConfigError(
            f"privacy.weighting='capped' folds weights up to privacy.max_weight={privacy.max_weight} "
            f"into the masked vectors; raise secure_aggregation.max_weight (now {sa.max_weight}) "
            "to at least that"
        )
    if fed.weighting == "examples" and not dp:  # with DP the weights follow privacy.weighting
        cap = config.data.max_examples_per_client
        if sa.max_weight == 1 or (cap is not None and cap > sa.max_weight):
            raise ConfigError(
                "federation.weighting='examples' folds each client's example count into its "
                "masked vector as an integer weight, so secure_aggregation.max_weight must bound "
                f"it (got max_weight={sa.max_weight}, data.max_examples_per_client={cap}); raise "
                "secure_aggregation.max_weight or set federation.weighting=uniform"
            )


__all__ = ["PHASES", "SecAggConfig", "check_composition"]
