"""The server side of SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017).

A pure state machine: each phase method takes the clients' messages of that phase
and returns the messages to send, keyed by recipient. A batch is validated in full
before any state changes, so a rejected message (``SecAggError`` with a ``reason``)
leaves the server where it was; :meth:`SecAggServer.check` validates one message
without side effects and :meth:`SecAggServer.screen` splits a batch into the uploads it
accepts and the rejected ones, for runtimes that drop a bad sender and go on.

Live sets: U1 (advertised keys) >= U2 (shared keys) >= U3 (sent masked input) >=
U4 (signed U3 and has t signing neighbours) >= U5 (answered the unmask request). After
each phase the server also drops clients with fewer than t live neighbours (they would
abort anyway, Bell et al. Alg. 2), and it aborts -- computing nothing -- when at most t
clients are left, when some secret it would need has fewer than t holders, or when U3's
neighbour graph is disconnected.

The clients decide the mode: when their advertised keys are signed (clients with
identity keys), the server runs Bonawitz et al.'s ConsistencyCheck (phase
``consistency``: :class:`ConsistencyRequest` out, :class:`ConsistencySignature` back,
the signatures forwarded in :class:`UnmaskRequest`); when none is signed, it goes from
``masked_input`` straight to ``unmasking`` (the semi-honest protocol). Given an
enrolment map (``identities``), it also verifies signatures itself and requires them.

After unmasking, the sum must be one that honest inputs can produce: total weight in
[|U3|, |U3| * max_weight] and every coordinate at most (2^bits - 1) * total weight, so
the decoded mean lies in [-clip_range, clip_range]; otherwise the round aborts with
``out_of_range`` (a client sent a masked vector outside the bounded encoding).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg import identity as auth
from fedlm.privacy.secagg.client import mask_sign
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.graph import default_degree, harary_neighbours, is_connected
from fedlm.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
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
from fedlm.privacy.secagg.server_checks import check_sum_range, choose_threshold, validate_upload


@dataclass(frozen=True)
class AggregateResult:
    """What the server learns: the cohort's weighted sum and total weight, nothing else.

    Attributes:
        total: uint array of shape (vector_len,), sum_i w_i q_i mod 2^m (exact).
        total_weight: sum of the survivors' weights.
        values: float64 array of shape (vector_len,), the decoded sum_i w_i x_i (with
            integer inputs: the sum in the ring, as ``total``).
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
        config: quantisation, degree and threshold settings (the threshold is never
            below the safe minimum for ``config.corrupt_fraction``).
        round_id: binds keys and ciphertexts to this round.
        graph_seed: seed of the neighbour graph; fresh random bits when None.
        identities: optional enrolment map (client id -> raw Ed25519 public key); when
            given, unsigned or wrongly signed uploads are rejected (``bad_signature``).
        integer_inputs: the inputs are ring elements of weight 1 (distributed DP's
            encoding): the sum is returned in the ring, not dequantised.

    Attributes:
        phase: the phase whose uploads the server expects next ("setup" first).
        degree, threshold: k (as built) and t.
        neighbours: client id -> frozenset of neighbour ids.
        authenticated: whether the clients sign (None until keys were advertised).
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
        identities: Mapping[str, bytes] | None = None,
        integer_inputs: bool = False,
    ) -> None:
        self.cohort = tuple(cohort)
        self.integer_inputs = integer_inputs
        n = len(self.cohort)
        if n < 2 or len(set(self.cohort)) != n:
            raise ConfigError(
                f"secure aggregation needs >= 2 distinct client ids, got {n} ({len(set(self.cohort))} distinct)"
            )
        if vector_len < 1:
            raise ConfigError(f"vector_len={vector_len} must be >= 1")
        need = required_modulus_bits(n, bits=config.bits, max_weight=config.max_weight)
        if need > config.modulus_bits and not integer_inputs:  # ring elements wrap by design
            raise ConfigError(
                f"secure_aggregation.modulus_bits={config.modulus_bits} cannot hold the sum of {n} clients at "
                f"bits={config.bits}, max_weight={config.max_weight}; use modulus_bits >= {need}"
            )
        self.config, self.vector_len, self.round_id = config, vector_len, round_id
        self.graph_seed = secrets.randbits(63) if graph_seed is None else graph_seed
        requested = min(n - 1, config.neighbours or default_degree(n))
        self.neighbours = harary_neighbours(self.cohort, degree=requested, seed=self.graph_seed)
        self.degree = min(len(v) for v in self.neighbours.values())
        self.threshold = choose_threshold(config, degree=self.degree, n=n)
        self.identities = auth.check_enrolment(identities) if identities is not None else None
        self.authenticated: bool | None = True if identities is not None else None
        self.index = {c: i for i, c in enumerate(self.cohort)}
        self._dtype = crypto.mask_dtype(config.modulus_bits)
        self.phase = "setup"
        self.digest = b""  # of the Setup, once sent
        self.survivors: tuple[str, ...] = ()  # U3, once known
        self.live: dict[str, set[str]] = {}  # phase -> live set after it (U1 .. U5)
        self.dropped: dict[str, list[str]] = {p: [] for p in PHASES}
        self.result: AggregateResult | None = None
        self._keys: dict[str, AdvertiseKeys] = {}
        self._masked: dict[str, np.ndarray] = {}

    # -- phase 0 ---------------------------------------------------------------------
    def setup(self) -> dict[str, Setup]:
        """The round's public parameters, one message per cohort member."""
        if self.phase != "setup":
            raise SecAggError("out_of_phase", f"setup() called in phase {self.phase!r}")
        c = self.config
        out = {
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
        self.digest = auth.setup_digest(out[self.cohort[0]])
        self.phase = "advertise_keys"
        return out

    # -- phases 1-2 --------------------------------------------------------------------
    def advertise_keys(self, msgs: Iterable[AdvertiseKeys]) -> dict[str, NeighbourKeys]:
        """Collect signed public keys (U1); send each live client its live neighbours' keys."""
        got = self._accept(msgs, "advertise_keys")
        if self.authenticated is None:  # the clients decide: any signature means all must sign
            self.authenticated = any(m.signature for m in got.values())
        live = {c for c, m in got.items() if bool(m.signature) == self.authenticated}
        live = self._close(live, "advertise_keys")
        self._keys = {c: got[c] for c in live}
        return {
            i: NeighbourKeys(
                self.round_id,
                i,
                tuple(
                    (j, k.enc_public, k.mask_public, k.signature)
                    for j in self.near(i, live)
                    for k in (self._keys[j],)
                ),
            )
            for i in self._ordered(live)
        }

    def share_keys(self, msgs: Iterable[ShareKeys]) -> dict[str, ForwardedShares]:
        """Collect encrypted shares (U2); route each to its recipient."""
        got = self._accept(msgs, "share_keys")
        live = self._close(set(got), "share_keys")
        routed = {c: dict(got[c].items) for c in live}
        return {
            i: ForwardedShares(
                self.round_id, i, tuple((j, routed[j][i]) for j in self.near(i, live))
            )
            for i in self._ordered(live)
        }

    # -- phases 3-4 --------------------------------------------------------------------
    def masked_input(
        self, msgs: Iterable[MaskedInput]
    ) -> dict[str, ConsistencyRequest] | dict[str, UnmaskRequest]:
        """Collect masked vectors (U3); ask survivors to sign U3 (or, unsigned, to unmask)."""
        got = self._accept(msgs, "masked_input")
        u2 = self.live["share_keys"]
        u3 = set(got)
        self.dropped["masked_input"] = self._ordered(u2 - u3)
        self.live["masked_input"] = u3
        self._masked = {c: got[c].values for c in u3}
        self._require(u3, u3, "masked_input")
        if not is_connected(u3, self.neighbours):
            self._abort("disconnected", "survivors' neighbour graph is split", "masked_input")
        self.survivors = tuple(self._ordered(u3))
        if self.authenticated:
            self.phase = "consistency"
            return {i: ConsistencyRequest(self.round_id, i, self.survivors) for i in self.survivors}
        self.live["consistency"] = set(u3)  # no consistency phase without signatures
        self.phase = "unmasking"
        return {i: UnmaskRequest(self.round_id, i, self.survivors) for i in self.survivors}

    def consistency(self, msgs: Iterable[ConsistencySignature]) -> dict[str, UnmaskRequest]:
        """Collect signatures over U3 (U4); forward each client its neighbours' signatures.

        Bonawitz et al. (2017), Fig. 4, ConsistencyCheck. A client with fewer than t
        signing neighbours would abort, so it is not asked to unmask.
        """
        got = self._accept(msgs, "consistency")
        u3, signed = self.live["masked_input"], set(got)
        ready = {i for i in signed if len(self.neighbours[i] & signed) >= self.threshold}
        self.dropped["consistency"] = self._ordered(u3 - ready)
        self.live["consistency"] = ready
        self._require(u3, ready, "consistency")
        self.phase = "unmasking"
        return {
            i: UnmaskRequest(
                self.round_id,
                i,
                self.survivors,
                tuple((j, got[j].signature) for j in self.near(i, signed)),
            )
            for i in self._ordered(ready)
        }

    # -- phase 5 -----------------------------------------------------------------------
    def unmask(self, msgs: Iterable[UnmaskShares]) -> AggregateResult:
        """Reconstruct seeds of survivors and mask keys of dropped clients; return the sum."""
        got = self._accept(msgs, "unmasking")
        u3 = self.live["masked_input"]
        u5 = set(got)
        self.dropped["unmasking"] = self._ordered(self.live["consistency"] - u5)
        self.live["unmasking"] = u5
        self._require(u3, u5, "unmasking")
        seeds: dict[str, list[shamir.Share]] = {}
        keys: dict[str, list[shamir.Share]] = {}
        for sender in self._ordered(u5):
            for owner, raw in got[sender].seed_shares:
                seeds.setdefault(owner, []).append(shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES))
            for owner, raw in got[sender].key_shares:
                keys.setdefault(owner, []).append(shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES))

        total = np.zeros(self.vector_len + 1, dtype=self._dtype)
        streams: list[tuple[bytes, bool]] = []  # (seed, subtract), all removed in one pass
        for i in self._ordered(u3):  # sum of y_i, then remove the self masks PRG(b_i)
            seed = self._recover(seeds[i], i)
            if auth.seed_commitment(seed, client=i, round_id=self.round_id) != self._keys[i].seed_commitment:
                self._abort("bad_share", f"shares of {i!r}'s self-mask seed do not match its commitment", "unmasking")
            streams.append((seed, True))
        for j in self._ordered(self.live["share_keys"] - u3):
            near = self.neighbours[j] & u3
            if not near:
                continue
            sk = crypto.private_key(self._recover(keys[j], j))
            if crypto.public_key(sk) != self._keys[j].mask_public:
                self._abort("bad_share", f"shares of {j!r}'s mask key do not match its public key", "unmasking")
            for i in self._ordered(near):  # survivor i added sign(i, j) * PRG(s_ij); take it out
                seed = crypto.agree(sk, self._keys[i].mask_public, label=b"mask", round_id=self.round_id)
                streams.append((seed, mask_sign(i, j, order=self.index) > 0))
        crypto.apply_streams(total, streams, addends=[self._masked[i] for i in self._ordered(u3)])
        m = self.config.modulus_bits
        if m < self._dtype.itemsize * 8:
            np.bitwise_and(total, self._dtype.type((1 << m) - 1), out=total)
        weight, problem = check_sum_range(total, n=len(u3), config=self.config, integer=self.integer_inputs)
        if problem:
            self._abort("out_of_range", problem, "unmasking")
        c = self.config
        if self.integer_inputs:  # the sum in the ring, for the mechanism to decode
            values = total[:-1].copy()
        else:
            values = dequantize_sum(total[:-1], bits=c.bits, clip=c.clip_range, total_weight=weight)
        self.phase = "done"
        self._masked = {}
        self.result = AggregateResult(total[:-1].copy(), weight, values, tuple(self._ordered(u3)))
        return self.result

    # -- validation ------------------------------------------------------------------
    def check(self, msg: Message) -> None:
        """Validate one upload against the current phase without changing any state."""
        validate_upload(self, msg, seen=set())

    def screen(self, msgs: Iterable[Message]) -> tuple[list[Message], list[tuple[str, str]]]:
        """Split uploads into those the current phase accepts and (sender, reason) of the rest.

        Changes no state; a second upload from the same sender is refused as ``replay``.
        """
        ok: list[Message] = []
        bad: list[tuple[str, str]] = []
        seen: set[str] = set()
        for msg in msgs:
            try:
                validate_upload(self, msg, seen=seen)
            except SecAggError as exc:
                bad.append((getattr(msg, "client", "?"), exc.reason))
                continue
            seen.add(msg.client)
            ok.append(msg)
        return ok, bad

    def _accept(self, msgs: Iterable[Message], phase: str) -> dict[str, Message]:
        """Validate a whole batch (raising on the first bad message), then hand it over."""
        if self.phase != phase:
            raise SecAggError(
                "out_of_phase", f"{phase}() called while the server is in {self.phase!r}"
            )
        seen: set[str] = set()
        got: dict[str, Message] = {}
        for msg in msgs:
            validate_upload(self, msg, seen=seen)
            seen.add(msg.client)
            got[msg.client] = msg
        return got

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

    def near(self, i: str, live: set[str]) -> list[str]:
        """Neighbours of ``i`` in ``live``, in cohort order."""
        return self._ordered(self.neighbours[i] & live)

    def _ordered(self, ids: Iterable[str]) -> list[str]:
        return sorted(ids, key=self.index.__getitem__)


__all__ = ["PHASES", "AggregateResult", "SecAggServer"]
