"""The client side of SecAgg+ (Bell et al. 2020, building on Bonawitz et al. 2017).

A pure state machine: each phase is a method that takes the server's message for
this client and returns the client's reply; no transport, no clock. A client that
meets a bad message raises :class:`SecAggError` with a ``reason``; a client that sees
the round cannot stay private (too few neighbours, disconnected survivors, a survivor set
its neighbours did not sign) raises :class:`SecAggAborted` and sends nothing more.
Either way it counts as dropped.

Phases (names as in ``Message.PHASE``):

1. ``advertise_keys(setup)``: refuse a Setup below this client's own safety bounds
   (:func:`~fedlm.privacy.secagg.safety.check_setup`); two fresh X25519 key pairs
   (encryption c, masking s) and a 32-byte self-mask seed b, the public keys signed with
   the client's long-term Ed25519 identity.
2. ``share_keys(neighbour_keys)``: verify each neighbour's signature against the
   enrolment map, then Shamir shares (threshold t) of s_sk and b to each live neighbour,
   encrypted with AES-GCM under HKDF(ECDH(c_i, c_j)).
3. ``masked_input(forwarded, vector)``: y = w * Q(x) + PRG(b) + sum_j +-PRG(HKDF(ECDH(s_i, s_j)))
   mod 2^m over neighbours j that shared (sign + if i comes before j in the cohort).
4. ``consistency(request)``: check the survivor set U3 (>= t members, connected, this
   client in it) and sign it (Bonawitz et al. 2017, Fig. 4, ConsistencyCheck).
5. ``unmask(request)``: only if the server shows the same U3 with >= t valid signatures
   of neighbours over it: for each neighbour j that shared, the share of b_j if j
   survived, else the share of s_j -- never both.

A client built without an identity key runs the semi-honest protocol (no signatures,
no phase 4; Bonawitz et al. 2017, Sec. 6.2) and warns (:class:`InsecureSecAggWarning`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg import identity as auth
from fedlm.privacy.secagg.errors import InsecureSecAggWarning, SecAggAborted, SecAggError
from fedlm.privacy.secagg.graph import is_connected
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
from fedlm.privacy.secagg.quantize import quantize
from fedlm.privacy.secagg.safety import check_setup, count_signers
from fedlm.privacy.secagg.state import (
    CLIENT_PHASES,
    SHARE_BYTES,
    client_from_bytes,
    client_to_bytes,
)

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
        config: this client's own settings; the safety bounds it enforces on the server's
            Setup (threshold, degree) and the quantisation it insists on. None: the
            defaults' bounds, quantisation settings only sanity-checked.
        identity: this client's long-term Ed25519 identity key (or its 32 raw bytes).
        known_identities: the enrolment map, client id -> raw Ed25519 public key, from a
            channel the server does not control; must list this client's own key.

    Attributes:
        phase: the phase whose server message this client expects next
            (one of :data:`CLIENT_PHASES`).
        authenticated: whether the client signs and verifies (it has an identity).
    """

    def __init__(
        self,
        client_id: str,
        *,
        rng: np.random.Generator | None = None,
        config: SecAggConfig | None = None,
        identity: Ed25519PrivateKey | bytes | None = None,
        known_identities: Mapping[str, bytes] | None = None,
    ) -> None:
        self.client_id = client_id
        self.phase = "setup"
        self.config = config if config is not None else SecAggConfig()
        self._match_config = config is not None
        self._identity, self._known = auth.client_identity(client_id, identity, known_identities)
        if self._identity is None:
            warnings.warn(
                f"SecAggClient({client_id!r}) has no identity key: it runs the semi-honest protocol, "
                "private only against a server that follows it; pass identity= and known_identities=",
                InsecureSecAggWarning,
                stacklevel=2,
            )
        self._rng = rng if rng is not None else np.random.default_rng()
        self._setup: Setup | None = None
        self._digest = b""
        self._index: dict[str, int] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (enc_pk, mask_pk), U1
        self._held: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (share of s_sk, of b), U2
        self._survivors: tuple[str, ...] = ()  # the U3 this client signed
        self._enc_sk = self._mask_sk = self._seed = b""
        self._enc_key = self._mask_key = None  # the two private keys, parsed once per round
        self._channels: dict[str, bytes] = {}  # neighbour -> AES key of the round's share channel

    @property
    def authenticated(self) -> bool:
        return self._identity is not None

    # -- phase 1 -------------------------------------------------------------------
    def advertise_keys(self, setup: Setup) -> AdvertiseKeys:
        """Check the round parameters, make fresh keys, return the public halves, signed."""
        self._expect(setup, Setup, "setup")
        graph = check_setup(
            setup, me=self.client_id, config=self.config, match_config=self._match_config
        )
        self._graph = graph
        self._setup = setup
        self._digest = auth.setup_digest(setup)
        self._index = {c: i for i, c in enumerate(setup.cohort)}
        self._enc_sk = crypto.generate_private_key()
        self._mask_sk = crypto.generate_private_key()
        self._seed = crypto.generate_private_key()  # any 32 random bytes; b_i
        self._enc_key, self._mask_key = crypto.private_key(self._enc_sk), crypto.private_key(self._mask_sk)
        self._channels = {}
        enc, mask = crypto.public_key(self._enc_key), crypto.public_key(self._mask_key)
        signature = b""
        if self._identity is not None:
            payload = auth.keys_payload(self._digest, self.client_id, enc, mask)
            signature = auth.sign(self._identity, payload)
        commitment = auth.seed_commitment(
            self._seed, client=self.client_id, round_id=setup.round_id
        )
        self.phase = "advertise_keys"
        return AdvertiseKeys(setup.round_id, self.client_id, enc, mask, commitment, signature)

    # -- phase 2 -------------------------------------------------------------------
    def share_keys(self, msg: NeighbourKeys) -> ShareKeys:
        """Verify the neighbours' signed keys; Shamir-share s_sk and b, one ciphertext each."""
        setup = self._expect(msg, NeighbourKeys, "advertise_keys")
        mine = self._graph[self.client_id]
        keys: dict[str, tuple[bytes, bytes]] = {}
        for cid, enc, mask, sig in msg.keys:
            if cid not in mine:
                raise SecAggError("not_member", f"{cid!r} is not a neighbour of {self.client_id!r}")
            if cid in keys:
                raise SecAggError("replay", f"keys of {cid!r} listed twice")
            payload = auth.keys_payload(self._digest, cid, enc, mask)
            if self.authenticated and not auth.verify(self._known.get(cid), sig, payload):
                raise SecAggError(
                    "bad_signature",
                    f"the keys of {cid!r} are not signed by its enrolled identity for this round's "
                    "Setup (swapped, replayed, or the server showed it other parameters)",
                )
            keys[cid] = (enc, mask)
        self._need(len(keys), "live neighbours after advertise_keys", phase="advertise_keys")
        self._keys = keys
        order = sorted(keys, key=self._index.__getitem__)
        xs = [self._index[c] + 1 for c in order]  # share x = cohort position + 1, never 0
        key_shares = shamir.split(self._mask_sk, threshold=setup.threshold, xs=xs)
        seed_shares = shamir.split(self._seed, threshold=setup.threshold, xs=xs)
        items = []
        for cid, ks, bs in zip(order, key_shares, seed_shares):
            blob = crypto.encrypt(
                self._channel(cid),
                ks.to_bytes() + bs.to_bytes(),
                aad=share_aad(self.client_id, cid, round_id=setup.round_id),
            )
            items.append((cid, blob))
        self.phase = "share_keys"
        return ShareKeys(setup.round_id, self.client_id, tuple(items))

    def _channel(self, cid: str) -> bytes:
        """The AES key shared with neighbour ``cid`` this round (``agree`` on the enc keys).

        Sending shares and opening the neighbour's use the same key: it is agreed once and
        kept for the round (a client restored from disk agrees again)."""
        key = self._channels.get(cid)
        if key is None:
            key = self._channels[cid] = crypto.agree(
                self._enc_key, self._keys[cid][0], label=b"enc", round_id=self._setup.round_id
            )
        return key

    # -- phase 3 -------------------------------------------------------------------
    def masked_input(
        self, msg: ForwardedShares, vector: np.ndarray, *, weight: int = 1
    ) -> MaskedInput:
        """Decrypt the shares held for neighbours, then mask the quantised vector.

        Args:
            msg: ciphertexts from the neighbours that completed ``share_keys`` (U2).
            vector: float array of shape (vector_len,); each coordinate is clipped to
                [-clip, clip] and quantised to [0, 2^bits - 1]. An unsigned-integer array
                is already an element of the ring ``Z_{2^m}`` (distributed DP's encoding,
                values in [0, 2^m)) and is masked as it is, with weight 1.
            weight: integer in [1, max_weight]; the server learns only the total weight.
        """
        setup = self._expect(msg, ForwardedShares, "share_keys")
        x = np.asarray(vector)
        integer = x.dtype.kind == "u"
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
            plain = crypto.decrypt(
                self._channel(sender), blob, aad=share_aad(sender, self.client_id, round_id=setup.round_id)
            )
            held[sender] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])
        self._need(len(held), "neighbours that shared keys", phase="share_keys")
        self._held = held

        m = setup.modulus_bits
        dtype = crypto.mask_dtype(m)
        length = setup.vector_len + 1  # the last word carries the weight
        y = np.empty(length, dtype=dtype)
        q = y[:-1]
        if integer:  # already in the ring: no quantisation, weight 1
            if weight != 1 or (x.size and int(x.max()) >> m):
                raise SecAggError(
                    "out_of_range", f"integer inputs need weight 1 and values below 2^{m} (weight={weight})"
                )
            q[:] = x.astype(dtype, copy=False)
        else:
            quantize(x, bits=setup.bits, clip=setup.clip, rng=self._rng, dtype=dtype, out=q)
        if weight != 1:
            q *= dtype.type(weight)  # w * q < 2^m by the headroom check, so no wrap here
        y[-1] = weight
        streams = [(self._seed, False)]  # self mask PRG(b_i)
        for cid in held:  # pairwise masks; arithmetic wraps mod 2^32 or 2^64
            seed = crypto.agree(
                self._mask_key, self._keys[cid][1], label=b"mask", round_id=setup.round_id
            )
            streams.append((seed, mask_sign(self.client_id, cid, order=self._index) < 0))
        crypto.apply_streams(y, streams)
        if m < dtype.itemsize * 8:
            np.bitwise_and(y, dtype.type((1 << m) - 1), out=y)
        self.phase = "masked_input"
        return MaskedInput(setup.round_id, self.client_id, m, y)

    # -- phase 4 -------------------------------------------------------------------
    def consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        """Check the survivor set U3 and sign it (Bonawitz et al. 2017, ConsistencyCheck)."""
        self._expect(msg, ConsistencyRequest, "masked_input")
        if self._identity is None:
            raise SecAggError(
                "out_of_phase", f"{self.client_id!r} has no identity key, so it runs no consistency check"
            )
        self._check_survivors(msg.survivors, phase="consistency")
        self._survivors = msg.survivors
        self.phase = "consistency"
        payload = auth.survivors_payload(self._digest, msg.survivors)
        return ConsistencySignature(msg.round_id, self.client_id, auth.sign(self._identity, payload))

    # -- phase 5 -------------------------------------------------------------------
    def unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        """Reveal the share of b_j for surviving and of s_j for dropped neighbours j.

        Authenticated, only for the U3 this client signed and only with t valid
        signatures of its neighbours over that same set; otherwise it aborts.
        """
        if self.authenticated:
            setup = self._expect(msg, UnmaskRequest, "consistency")
            self._check_signed_by_neighbours(msg)
        else:
            setup = self._expect(msg, UnmaskRequest, "masked_input")
            self._check_survivors(msg.survivors, phase="unmasking")
        survivors = set(msg.survivors)
        order = sorted(self._held, key=self._index.__getitem__)
        seeds = tuple((c, self._held[c][1]) for c in order if c in survivors)
        keys = tuple((c, self._held[c][0]) for c in order if c not in survivors)
        self.phase = "done"
        self._held = {}  # a second request must not reveal the other share of anyone
        return UnmaskShares(setup.round_id, self.client_id, seeds, keys)

    def handle(self, msg: Message) -> Message:
        """The reply to any server message but ForwardedShares (which needs the vector).

        Setup -> advertise_keys, NeighbourKeys -> share_keys, ConsistencyRequest ->
        consistency, UnmaskRequest -> unmask: what a transport calls per message.
        """
        steps = {Setup: self.advertise_keys, NeighbourKeys: self.share_keys,
                 ConsistencyRequest: self.consistency, UnmaskRequest: self.unmask}
        step = steps.get(type(msg))
        if step is None:
            raise SecAggError("out_of_phase", f"{type(msg).__name__} is not a message a client answers by itself")
        return step(msg)  # type: ignore[operator]

    # -- serialisation -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """This state machine as bytes (JSON + raw keys; no pickle). Secret: store as 0600.

        The long-term identity key is not included; :meth:`from_bytes` takes it again.
        """
        return client_to_bytes(self)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        identity: Ed25519PrivateKey | bytes | None = None,
        rng: np.random.Generator | None = None,
    ) -> SecAggClient:
        """Inverse of :meth:`to_bytes`, every field validated (else ``SecAggError('bad_state')``).

        ``identity``: required when the saved client had one (it must match); ``rng``
        replaces the saved rounding-noise generator (None: the saved PCG64 state).
        """
        return client_from_bytes(cls, data, identity=identity, rng=rng)

    # -- checks --------------------------------------------------------------------
    def _check_survivors(self, survivors: tuple[str, ...], *, phase: str) -> None:
        """U3 is canonical (cohort order), holds this client, >= t members, connected."""
        setup = self._setup
        if setup is None:  # unreachable: callers passed _expect
            raise SecAggError("out_of_phase", "no round set up")
        pos = [self._index.get(c, -1) for c in survivors]
        if min(pos, default=0) < 0 or len(set(survivors)) != len(survivors):
            raise SecAggError("not_member", "survivor list has duplicates or ids outside the cohort")
        if self.client_id not in survivors:
            raise SecAggError(
                "not_member", f"{self.client_id!r} sent its input but is not listed as a survivor"
            )
        if pos != sorted(pos):
            raise SecAggError("malformed", "survivor list is not in cohort order")
        self._need(len(survivors), "survivors in the round", phase=phase)
        self._need(len(set(survivors) & set(self._held)), "surviving neighbours", phase=phase)
        if not is_connected(set(survivors), self._graph):
            self.phase = "aborted"
            raise SecAggAborted(
                "disconnected",
                "the survivors' neighbour graph is split; unmasking would reveal partial sums",
                phase=phase,
            )

    def _check_signed_by_neighbours(self, msg: UnmaskRequest) -> None:
        """The server shows the signed U3 with >= t valid signatures of neighbours in U3."""
        t = self._setup.threshold if self._setup is not None else 0
        if msg.survivors != self._survivors:
            self._abort("inconsistent", "the unmask request lists another survivor set than the one signed")
        eligible = self._graph[self.client_id] & set(self._survivors)
        payload = auth.survivors_payload(self._digest, self._survivors)
        valid = count_signers(msg.signatures, eligible=eligible, known=self._known, payload=payload, enough=t)
        if valid < t:
            self._abort("inconsistent", f"{valid} neighbours signed this survivor set, threshold is {t}")

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
            self._abort(
                "below_threshold",
                f"{self.client_id!r} has {have} {what}, threshold is {self._setup.threshold}",
                phase=phase,
            )

    def _abort(self, reason: str, detail: str, *, phase: str = "unmasking") -> NoReturn:
        self.phase = "aborted"
        self._held = {}
        raise SecAggAborted(reason, detail, phase=phase)


__all__ = [
    "CIPHERTEXT_BYTES",
    "CLIENT_PHASES",
    "SHARE_BYTES",
    "SecAggClient",
    "mask_sign",
    "share_aad",
]
