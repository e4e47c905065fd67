"""The server side of SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017), semi-honest.

A pure state machine: each phase method takes the clients' messages of that phase
and returns the messages to send, keyed by recipient. A batch is validated in full
before any state changes, so a rejected message (``SecAggError`` with a ``reason``)
leaves the server where it was; :meth:`SecAggServer.check` validates one message
without side effects, for runtimes that want to drop a bad sender and go on.

Live sets: U1 (advertised keys) >= U2 (shared keys) >= U3 (sent masked input) >= U4
(answered the unmask request). After each phase the server also drops clients with
fewer than t live neighbours (they would abort anyway, Bell et al. Alg. 2), and it
aborts -- computing nothing -- when at most t clients are left, when some secret it
would need has fewer than t holders, or when U3's neighbour graph is disconnected.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg.client import CIPHERTEXT_BYTES, mask_sign
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.graph import (
    default_degree,
    default_threshold,
    harary_neighbours,
    is_connected,
)
from fedlm.privacy.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    Message,
    NeighbourKeys,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from fedlm.privacy.secagg.quantize import dequantize_sum, required_modulus_bits

_UPLOADS = {
    "advertise_keys": AdvertiseKeys,
    "share_keys": ShareKeys,
    "masked_input": MaskedInput,
    "unmasking": UnmaskShares,
}


@dataclass(frozen=True)
class AggregateResult:
    """What the server learns: the cohort's weighted sum and total weight, nothing else.

    Attributes:
        total: uint array of shape (vector_len,), sum_i w_i q_i mod 2^m (exact).
        total_weight: sum of the survivors' weights.
        values: float64 array of shape (vector_len,), the decoded sum_i w_i x_i.
        survivors: ids whose inputs are in the sum (U3), in cohort order.
    """

    total: np.ndarray
    total_weight: int
    values: np.ndarray
    survivors: tuple[str, ...]


class SecAggServer:
    """The server's run of one SecAgg+ round.

    Args:
        cohort: client ids of the round, in a fixed order (it orders mask signs and
            share points).
        vector_len: L, the number of float values per client.
        config: quantisation, degree and threshold settings.
        round_id: binds keys and ciphertexts to this round.
        graph_seed: seed of the neighbour graph; fresh random bits when None.

    Attributes:
        phase: the phase whose uploads the server expects next ("setup" first).
        degree, threshold: k (as built) and t.
        neighbours: client id -> frozenset of neighbour ids.
        dropped: phase -> ids that did not send that phase's message or were pruned.
        result: the :class:`AggregateResult` once ``unmask`` succeeded, else None.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        *,
        vector_len: int,
        config: SecAggConfig,
        round_id: int = 1,
        graph_seed: int | None = None,
    ) -> None:
        self.cohort = tuple(cohort)
        n = len(self.cohort)
        if n < 2 or len(set(self.cohort)) != n:
            raise ConfigError(
                f"secure aggregation needs >= 2 distinct client ids, got {n} ({len(set(self.cohort))} distinct)"
            )
        if vector_len < 1:
            raise ConfigError(f"vector_len={vector_len} must be >= 1")
        need = required_modulus_bits(n, bits=config.bits, max_weight=config.max_weight)
        if need > config.modulus_bits:
            raise ConfigError(
                f"secure_aggregation.modulus_bits={config.modulus_bits} cannot hold the sum of {n} clients at "
                f"bits={config.bits}, max_weight={config.max_weight}; use modulus_bits >= {need}"
            )
        self.config, self.vector_len, self.round_id = config, vector_len, round_id
        self.graph_seed = secrets.randbits(63) if graph_seed is None else graph_seed
        requested = min(n - 1, config.neighbours or default_degree(n))
        self.neighbours = harary_neighbours(self.cohort, degree=requested, seed=self.graph_seed)
        self.degree = min(len(v) for v in self.neighbours.values())
        self.threshold = config.threshold or default_threshold(
            self.degree, fraction=config.threshold_fraction
        )
        if not 2 <= self.threshold <= self.degree:
            raise ConfigError(
                f"secure_aggregation.threshold={self.threshold} must be in [2, {self.degree}] (the neighbour degree "
                f"for n={n}); lower it or raise secure_aggregation.neighbours"
            )
        self._index = {c: i for i, c in enumerate(self.cohort)}
        self._dtype = crypto.mask_dtype(config.modulus_bits)
        self.phase = "setup"
        self.live: dict[str, set[str]] = {}  # phase -> live set after it (U1, U2, U3, U4)
        self.dropped: dict[str, list[str]] = {p: [] for p in PHASES}
        self.result: AggregateResult | None = None
        self._keys: dict[str, AdvertiseKeys] = {}
        self._shares: dict[str, ShareKeys] = {}
        self._masked: dict[str, np.ndarray] = {}

    # -- phase 0 ---------------------------------------------------------------------
    def setup(self) -> dict[str, Setup]:
        """The round's public parameters, one message per cohort member."""
        if self.phase != "setup":
            raise SecAggError("out_of_phase", f"setup() called in phase {self.phase!r}")
        self.phase = "advertise_keys"
        c = self.config
        return {
            cid: Setup(
                self.round_id,
                cid,
                self.cohort,
                self.graph_seed,
                self.degree,
                self.threshold,
                self.vector_len,
                c.modulus_bits,
                c.bits,
                c.clip_range,
                c.max_weight,
            )
            for cid in self.cohort
        }

    # -- phases 1-4 --------------------------------------------------------------------
    def advertise_keys(self, msgs: Iterable[AdvertiseKeys]) -> dict[str, NeighbourKeys]:
        """Collect public keys (U1); send each live client its live neighbours' keys."""
        got = self._accept(msgs, "advertise_keys")
        live = self._close(set(got), "advertise_keys")
        self._keys = {c: got[c] for c in live}
        return {
            i: NeighbourKeys(
                self.round_id,
                i,
                tuple(
                    (j, self._keys[j].enc_public, self._keys[j].mask_public)
                    for j in self._near(i, live)
                ),
            )
            for i in self._ordered(live)
        }

    def share_keys(self, msgs: Iterable[ShareKeys]) -> dict[str, ForwardedShares]:
        """Collect encrypted shares (U2); route each to its recipient."""
        got = self._accept(msgs, "share_keys")
        live = self._close(set(got), "share_keys")
        self._shares = {c: got[c] for c in live}
        routed = {c: dict(m.items) for c, m in self._shares.items()}
        return {
            i: ForwardedShares(
                self.round_id, i, tuple((j, routed[j][i]) for j in self._near(i, live))
            )
            for i in self._ordered(live)
        }

    def masked_input(self, msgs: Iterable[MaskedInput]) -> dict[str, UnmaskRequest]:
        """Collect masked vectors (U3); ask survivors for the shares that unmask the sum."""
        got = self._accept(msgs, "masked_input")
        u2 = self.live["share_keys"]
        u3 = set(got)
        self.dropped["masked_input"] = [c for c in self._ordered(u2 - u3)]
        self.live["masked_input"] = u3
        self._masked = {c: got[c].values for c in u3}
        self._require(u3, u3, "masked_input")
        if not is_connected(u3, self.neighbours):
            self._abort("disconnected", "survivors' neighbour graph is split", "masked_input")
        survivors = tuple(self._ordered(u3))
        self.phase = "unmasking"
        return {i: UnmaskRequest(self.round_id, i, survivors) for i in survivors}

    def unmask(self, msgs: Iterable[UnmaskShares]) -> AggregateResult:
        """Reconstruct seeds of survivors and mask keys of dropped clients; return the sum."""
        got = self._accept(msgs, "unmasking")
        u3 = self.live["masked_input"]
        u4 = set(got)
        self.dropped["unmasking"] = [c for c in self._ordered(u3 - u4)]
        self.live["unmasking"] = u4
        self._require(u3, u4, "unmasking")
        seeds: dict[str, list[shamir.Share]] = {}
        keys: dict[str, list[shamir.Share]] = {}
        for sender in self._ordered(u4):
            for owner, raw in got[sender].seed_shares:
                seeds.setdefault(owner, []).append(
                    shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES)
                )
            for owner, raw in got[sender].key_shares:
                keys.setdefault(owner, []).append(
                    shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES)
                )

        length = self.vector_len + 1
        total = np.zeros(length, dtype=self._dtype)
        streams: list[tuple[bytes, bool]] = []  # (seed, subtract), all removed in one pass
        for i in self._ordered(u3):  # sum of y_i, then remove the self masks PRG(b_i)
            streams.append((self._recover(seeds[i], i), True))
        for j in self._ordered(self.live["share_keys"] - u3):
            near = self.neighbours[j] & u3
            if not near:
                continue
            sk = self._recover(keys[j], j)
            if crypto.public_key(sk) != self._keys[j].mask_public:
                self._abort(
                    "bad_share",
                    f"shares of {j!r}'s mask key do not match its public key",
                    "unmasking",
                )
            for i in self._ordered(near):  # survivor i added sign(i, j) * PRG(s_ij); take it out
                seed = crypto.agree(
                    sk, self._keys[i].mask_public, label=b"mask", round_id=self.round_id
                )
                streams.append((seed, mask_sign(i, j, order=self._index) > 0))
        crypto.apply_streams(total, streams, addends=[self._masked[i] for i in self._ordered(u3)])
        m = self.config.modulus_bits
        if m < self._dtype.itemsize * 8:
            np.bitwise_and(total, self._dtype.type((1 << m) - 1), out=total)
        weight = int(total[-1])
        if not len(u3) <= weight <= len(u3) * self.config.max_weight:
            # Masks did not cancel (corrupted shares); the vector would be noise.
            self._abort(
                "bad_share",
                f"total weight {weight} is outside [{len(u3)}, {len(u3) * self.config.max_weight}]",
                "unmasking",
            )
        c = self.config
        values = dequantize_sum(total[:-1], bits=c.bits, clip=c.clip_range, total_weight=weight)
        self.phase = "done"
        self._masked = {}
        self.result = AggregateResult(total[:-1].copy(), weight, values, tuple(self._ordered(u3)))
        return self.result

    # -- validation ------------------------------------------------------------------
    def check(self, msg: Message) -> None:
        """Validate one upload against the current phase without changing any state."""
        self._validate(msg, seen=set())

    def _accept(self, msgs: Iterable[Message], phase: str) -> dict[str, Message]:
        """Validate a whole batch (raising on the first bad message), then hand it over."""
        if self.phase != phase:
            raise SecAggError(
                "out_of_phase", f"{phase}() called while the server is in {self.phase!r}"
            )
        seen: set[str] = set()
        got: dict[str, Message] = {}
        for msg in msgs:
            self._validate(msg, seen=seen)
            seen.add(msg.client)
            got[msg.client] = msg
        return got

    def _validate(self, msg: Message, *, seen: set[str]) -> None:
        phase = self.phase
        if phase not in _UPLOADS or not isinstance(msg, _UPLOADS[phase]):
            raise SecAggError("out_of_phase", f"server in phase {phase!r} got {type(msg).__name__}")
        if msg.round_id != self.round_id:
            raise SecAggError(
                "wrong_round", f"message of round {msg.round_id}, this is round {self.round_id}"
            )
        sender = msg.client
        allowed = (
            set(self.cohort)
            if phase == "advertise_keys"
            else self.live[PHASES[PHASES.index(phase) - 1]]
        )
        if sender not in allowed:
            raise SecAggError(
                "not_member", f"{sender!r} is not a live member of the cohort in phase {phase!r}"
            )
        if sender in seen:
            raise SecAggError("replay", f"{sender!r} already sent its {phase!r} message")
        if isinstance(msg, ShareKeys):
            want = set(self._near(sender, self.live["advertise_keys"]))
            got = [cid for cid, _ in msg.items]
            if len(got) != len(set(got)) or set(got) != want:
                raise SecAggError(
                    "wrong_size", f"{sender!r} must address exactly its {len(want)} live neighbours"
                )
            bad = [cid for cid, blob in msg.items if len(blob) != CIPHERTEXT_BYTES]
            if bad:
                raise SecAggError(
                    "wrong_size",
                    f"{sender!r}'s ciphertexts to {bad[:3]} are not {CIPHERTEXT_BYTES} bytes",
                )
        elif isinstance(msg, MaskedInput):
            if (
                msg.modulus_bits != self.config.modulus_bits
                or msg.values.size != self.vector_len + 1
            ):
                raise SecAggError(
                    "wrong_size",
                    f"{sender!r} sent {msg.values.size} values mod 2^{msg.modulus_bits}, expected "
                    f"{self.vector_len + 1} mod 2^{self.config.modulus_bits}",
                )
        elif isinstance(msg, UnmaskShares):
            self._validate_unmask(msg)

    def _validate_unmask(self, msg: UnmaskShares) -> None:
        sender, u3 = msg.client, self.live["masked_input"]
        held = set(self._near(sender, self.live["share_keys"]))
        seed_owners = [c for c, _ in msg.seed_shares]
        key_owners = [c for c, _ in msg.key_shares]
        if (
            set(seed_owners) != held & u3
            or set(key_owners) != held - u3
            or len(seed_owners) + len(key_owners) != len(held)
        ):
            raise SecAggError(
                "wrong_size",
                f"{sender!r} must send one share per neighbour: seeds of survivors, keys of dropped",
            )
        for _, raw in (*msg.seed_shares, *msg.key_shares):
            share = shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES)
            if share.x != self._index[sender] + 1:
                raise SecAggError(
                    "malformed",
                    f"{sender!r} sent a share at x={share.x}, its point is {self._index[sender] + 1}",
                )

    # -- helpers -----------------------------------------------------------------------
    def _close(self, live: set[str], phase: str) -> set[str]:
        """Record dropouts, prune clients with < t live neighbours, abort if too few remain."""
        before = (
            set(self.cohort)
            if phase == "advertise_keys"
            else self.live[PHASES[PHASES.index(phase) - 1]]
        )
        pruned = True
        while pruned:
            starved = {i for i in live if len(self.neighbours[i] & live) < self.threshold}
            live -= starved
            pruned = bool(starved)
        self.dropped[phase] = self._ordered(before - live)
        self.live[phase] = live
        if len(live) <= self.threshold:
            self._abort(
                "below_threshold",
                f"{len(live)} live clients, need more than t={self.threshold}",
                phase,
            )
        self.phase = PHASES[PHASES.index(phase) + 1]
        return live

    def _require(self, u3: set[str], holders: set[str], phase: str) -> None:
        """Every secret the unmasking needs must have >= t live holders."""
        if len(holders) <= self.threshold:
            self._abort(
                "below_threshold",
                f"{len(holders)} live clients, need more than t={self.threshold}",
                phase,
            )
        needed = u3 | {j for j in self.live["share_keys"] - u3 if self.neighbours[j] & u3}
        short = [
            c for c in self._ordered(needed) if len(self.neighbours[c] & holders) < self.threshold
        ]
        if short:
            self._abort(
                "below_threshold",
                f"secrets of {short[:3]} have fewer than t={self.threshold} live holders",
                phase,
            )

    def _recover(self, shares: list[shamir.Share], owner: str) -> bytes:
        try:
            return shamir.reconstruct(shares, threshold=self.threshold, secret_len=crypto.KEY_BYTES)
        except SecAggError as exc:
            self._abort(
                "bad_share", f"shares of {owner!r} are inconsistent ({exc.reason})", "unmasking"
            )

    def _abort(self, reason: str, detail: str, phase: str) -> NoReturn:
        self.phase = "aborted"
        self._masked = {}  # nothing about any input is kept or returned
        raise SecAggAborted(reason, detail, phase=phase)

    def _near(self, i: str, live: set[str]) -> list[str]:
        return self._ordered(self.neighbours[i] & live)

    def _ordered(self, ids: Iterable[str]) -> list[str]:
        return sorted(ids, key=self._index.__getitem__)


__all__ = ["PHASES", "AggregateResult", "SecAggServer"]
