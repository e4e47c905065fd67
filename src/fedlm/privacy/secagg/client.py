"""The client side of SecAgg+ (Bell et al. 2020, building on Bonawitz et al. 2017).

A pure state machine: each phase is a method that takes the server's message for
this client and returns the client's reply; no transport, no clock. A client that
meets a bad message raises :class:`SecAggError` with a ``reason``; a client that sees
the round cannot stay private (too few neighbours, disconnected survivors) raises
:class:`SecAggAborted` and sends nothing more. Either way it counts as dropped.

Phases (names as in ``Message.PHASE``):

1. ``advertise_keys(setup)``: two fresh X25519 key pairs (encryption c, masking s)
   and a 32-byte self-mask seed b.
2. ``share_keys(neighbour_keys)``: Shamir shares (threshold t) of s_sk and b to each
   live neighbour, encrypted with AES-GCM under HKDF(ECDH(c_i, c_j)).
3. ``masked_input(forwarded, vector)``: y = w * Q(x) + PRG(b) + sum_j +-PRG(HKDF(ECDH(s_i, s_j)))
   mod 2^m over neighbours j that shared (sign + if i comes before j in the cohort).
4. ``unmask(request)``: for each neighbour j that shared, the share of b_j if j
   survived, else the share of s_j -- never both.
"""

from __future__ import annotations

import numpy as np

from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.graph import harary_neighbours, is_connected
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
from fedlm.privacy.secagg.quantize import quantize, required_modulus_bits

SECRET_BYTES = crypto.KEY_BYTES
SHARE_BYTES = len(shamir.Share(x=1, ys=(0,) * shamir.n_chunks(SECRET_BYTES)).to_bytes())
# One encrypted payload: nonce + (share of s_sk || share of b) + tag.
CIPHERTEXT_BYTES = 12 + 2 * SHARE_BYTES + 16


def share_aad(sender: str, recipient: str, *, round_id: int) -> bytes:
    """Associated data binding a share ciphertext to its round and both endpoints."""
    return round_id.to_bytes(8, "big") + sender.encode() + b"\x00" + recipient.encode()


def mask_sign(me: str, other: str, *, order: dict[str, int]) -> int:
    """+1 if ``me`` precedes ``other`` in the cohort order, else -1 (masks cancel in pairs)."""
    return 1 if order[me] < order[other] else -1


class SecAggClient:
    """One client's run of one SecAgg+ round.

    Args:
        client_id: this client's id, as listed in the cohort.
        rng: source of stochastic-rounding noise (not of any key or mask).

    Attributes:
        phase: the phase whose server message this client expects next.
    """

    def __init__(self, client_id: str, *, rng: np.random.Generator | None = None) -> None:
        self.client_id = client_id
        self.phase = "setup"
        self._rng = rng if rng is not None else np.random.default_rng()
        self._setup: Setup | None = None
        self._index: dict[str, int] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (enc_pk, mask_pk), U1
        self._held: dict[
            str, tuple[bytes, bytes]
        ] = {}  # neighbour -> (share of s_sk, share of b), U2
        self._enc_sk = self._mask_sk = self._seed = b""

    # -- phase 1 -------------------------------------------------------------------
    def advertise_keys(self, setup: Setup) -> AdvertiseKeys:
        """Check the round parameters, make fresh keys, return the public halves."""
        self._expect(setup, Setup, "setup")
        n = len(setup.cohort)
        if self.client_id not in setup.cohort or len(set(setup.cohort)) != n:
            raise SecAggError(
                "not_member", f"{self.client_id!r} is not (uniquely) in the round's cohort"
            )
        if setup.vector_len < 1 or setup.max_weight < 1:
            raise SecAggError(
                "bad_params", f"vector_len={setup.vector_len}, max_weight={setup.max_weight}"
            )
        need = required_modulus_bits(n, bits=setup.bits, max_weight=setup.max_weight)
        if need > setup.modulus_bits:
            raise SecAggError(
                "bad_params",
                f"modulus_bits={setup.modulus_bits} < {need} needed for n={n} without overflow",
            )
        self._graph = harary_neighbours(setup.cohort, degree=setup.degree, seed=setup.graph_seed)
        if not 2 <= setup.threshold <= len(self._graph[self.client_id]):
            raise SecAggError(
                "bad_params",
                f"threshold={setup.threshold} outside [2, {len(self._graph[self.client_id])}]",
            )
        self._setup = setup
        self._index = {c: i for i, c in enumerate(setup.cohort)}
        self._enc_sk = crypto.generate_private_key()
        self._mask_sk = crypto.generate_private_key()
        self._seed = crypto.generate_private_key()  # any 32 random bytes; b_i
        self.phase = "advertise_keys"
        return AdvertiseKeys(
            setup.round_id,
            self.client_id,
            crypto.public_key(self._enc_sk),
            crypto.public_key(self._mask_sk),
        )

    # -- phase 2 -------------------------------------------------------------------
    def share_keys(self, msg: NeighbourKeys) -> ShareKeys:
        """Shamir-share s_sk and b to the live neighbours, one ciphertext each."""
        setup = self._expect(msg, NeighbourKeys, "advertise_keys")
        mine = self._graph[self.client_id]
        keys: dict[str, tuple[bytes, bytes]] = {}
        for cid, enc, mask in msg.keys:
            if cid not in mine:
                raise SecAggError("not_member", f"{cid!r} is not a neighbour of {self.client_id!r}")
            if cid in keys:
                raise SecAggError("replay", f"keys of {cid!r} listed twice")
            keys[cid] = (enc, mask)
        self._need(len(keys), "live neighbours after advertise_keys", phase="advertise_keys")
        self._keys = keys
        order = sorted(keys, key=self._index.__getitem__)
        xs = [self._index[c] + 1 for c in order]  # share x = cohort position + 1, never 0
        key_shares = shamir.split(self._mask_sk, threshold=setup.threshold, xs=xs)
        seed_shares = shamir.split(self._seed, threshold=setup.threshold, xs=xs)
        items = []
        for cid, ks, bs in zip(order, key_shares, seed_shares):
            aes = crypto.agree(self._enc_sk, keys[cid][0], label=b"enc", round_id=setup.round_id)
            blob = crypto.encrypt(
                aes,
                ks.to_bytes() + bs.to_bytes(),
                aad=share_aad(self.client_id, cid, round_id=setup.round_id),
            )
            items.append((cid, blob))
        self.phase = "share_keys"
        return ShareKeys(setup.round_id, self.client_id, tuple(items))

    # -- phase 3 -------------------------------------------------------------------
    def masked_input(
        self, msg: ForwardedShares, vector: np.ndarray, *, weight: int = 1
    ) -> MaskedInput:
        """Decrypt the shares held for neighbours, then mask the quantised vector.

        Args:
            msg: ciphertexts from the neighbours that completed ``share_keys`` (U2).
            vector: float array of shape (vector_len,).
            weight: integer in [1, max_weight]; the server learns only the total weight.
        """
        setup = self._expect(msg, ForwardedShares, "share_keys")
        x = np.asarray(vector)
        if x.shape != (setup.vector_len,):
            raise SecAggError(
                "wrong_size", f"vector has shape {x.shape}, expected ({setup.vector_len},)"
            )
        if not (isinstance(weight, (int, np.integer)) and 1 <= weight <= setup.max_weight):
            raise SecAggError(
                "bad_params", f"weight={weight!r} must be an int in [1, {setup.max_weight}]"
            )
        held: dict[str, tuple[bytes, bytes]] = {}
        for sender, blob in msg.items:
            if sender not in self._keys:
                raise SecAggError("not_member", f"share from {sender!r}, not a live neighbour")
            if sender in held:
                raise SecAggError("replay", f"two share ciphertexts from {sender!r}")
            if len(blob) != CIPHERTEXT_BYTES:
                raise SecAggError(
                    "wrong_size",
                    f"ciphertext from {sender!r} is {len(blob)} bytes, not {CIPHERTEXT_BYTES}",
                )
            aes = crypto.agree(
                self._enc_sk, self._keys[sender][0], label=b"enc", round_id=setup.round_id
            )
            plain = crypto.decrypt(
                aes, blob, aad=share_aad(sender, self.client_id, round_id=setup.round_id)
            )
            held[sender] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])
        self._need(len(held), "neighbours that shared keys", phase="share_keys")
        self._held = held

        m = setup.modulus_bits
        dtype = crypto.mask_dtype(m)
        length = setup.vector_len + 1  # the last word carries the weight
        y = np.empty(length, dtype=dtype)
        q = y[:-1]
        q[:] = quantize(x, bits=setup.bits, clip=setup.clip, rng=self._rng, dtype=dtype)
        if weight != 1:
            q *= dtype.type(weight)  # w * q < 2^m by the headroom check, so no wrap here
        y[-1] = weight
        streams = [(self._seed, False)]  # self mask PRG(b_i)
        for cid in held:  # pairwise masks; arithmetic wraps mod 2^32 or 2^64
            seed = crypto.agree(
                self._mask_sk, self._keys[cid][1], label=b"mask", round_id=setup.round_id
            )
            streams.append((seed, mask_sign(self.client_id, cid, order=self._index) < 0))
        crypto.apply_streams(y, streams)
        if m < dtype.itemsize * 8:
            np.bitwise_and(y, dtype.type((1 << m) - 1), out=y)
        self.phase = "masked_input"
        return MaskedInput(setup.round_id, self.client_id, m, y)

    # -- phase 4 -------------------------------------------------------------------
    def unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        """Reveal the share of b_j for surviving and of s_j for dropped neighbours j."""
        setup = self._expect(msg, UnmaskRequest, "masked_input")
        survivors = set(msg.survivors)
        if len(survivors) != len(msg.survivors) or not survivors <= set(setup.cohort):
            raise SecAggError(
                "not_member", "survivor list has duplicates or ids outside the cohort"
            )
        if self.client_id not in survivors:
            raise SecAggError(
                "not_member", f"{self.client_id!r} sent its input but is not listed as a survivor"
            )
        self._need(len(survivors & set(self._held)), "surviving neighbours", phase="masked_input")
        if not is_connected(survivors, self._graph):
            raise SecAggAborted(
                "disconnected",
                "the survivors' neighbour graph is split; unmasking would reveal partial sums",
                phase="unmasking",
            )
        order = sorted(self._held, key=self._index.__getitem__)
        seeds = tuple((c, self._held[c][1]) for c in order if c in survivors)
        keys = tuple((c, self._held[c][0]) for c in order if c not in survivors)
        self.phase = "done"
        self._held = {}  # a second request must not reveal the other share of anyone
        return UnmaskShares(setup.round_id, self.client_id, seeds, keys)

    # -- checks --------------------------------------------------------------------
    def _expect(self, msg: Message, kind: type[Message], phase: str) -> Setup:
        """Check type, phase, addressee and round; return the round's Setup (or ``msg`` itself)."""
        if not isinstance(msg, kind) or self.phase != phase:
            raise SecAggError(
                "out_of_phase",
                f"{self.client_id!r} in phase {self.phase!r} got {type(msg).__name__}",
            )
        if msg.client != self.client_id:
            raise SecAggError(
                "not_member", f"message for {msg.client!r} delivered to {self.client_id!r}"
            )
        if self._setup is None:  # phase "setup": msg is the Setup being checked
            return msg if isinstance(msg, Setup) else Setup(msg.round_id, msg.client)
        if msg.round_id != self._setup.round_id:
            raise SecAggError(
                "wrong_round", f"round {msg.round_id}, expected {self._setup.round_id}"
            )
        return self._setup

    def _need(self, have: int, what: str, *, phase: str) -> None:
        if self._setup is not None and have < self._setup.threshold:
            self.phase = "aborted"
            raise SecAggAborted(
                "below_threshold",
                f"{self.client_id!r} has {have} {what}, threshold is {self._setup.threshold}",
                phase=phase,
            )


__all__ = ["CIPHERTEXT_BYTES", "SHARE_BYTES", "SecAggClient", "mask_sign", "share_aad"]
