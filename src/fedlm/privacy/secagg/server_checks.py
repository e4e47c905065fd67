"""What the SecAgg+ server checks: its own threshold, and each client upload.

The server's checks protect the round's liveness and the correctness of the sum; the
privacy of each input rests on the clients' own checks (:mod:`fedlm.privacy.secagg.safety`,
the signatures and the consistency check), since a malicious server skips its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg import identity as auth
from fedlm.privacy.secagg.client import CIPHERTEXT_BYTES
from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.graph import default_threshold, min_safe_threshold
from fedlm.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    Message,
    ShareKeys,
    UnmaskShares,
)

UPLOADS: dict[str, type[Message]] = {
    "advertise_keys": AdvertiseKeys,
    "share_keys": ShareKeys,
    "masked_input": MaskedInput,
    "consistency": ConsistencySignature,
    "unmasking": UnmaskShares,
}


def choose_threshold(config: SecAggConfig, *, degree: int, n: int) -> int:
    """The round's t: as configured, else the smallest safe one; never below it.

    Raises:
        ConfigError: t outside [max(2, t_min), degree], naming the field and the fix.
    """
    gamma = config.corrupt_fraction
    if config.threshold is not None:
        t = config.threshold
    elif config.threshold_fraction is not None:
        t = default_threshold(degree, fraction=config.threshold_fraction)
    else:
        t = min_safe_threshold(degree, corrupt_fraction=gamma)
    low = max(2, min_safe_threshold(degree, corrupt_fraction=gamma))
    if not low <= t <= degree:
        raise ConfigError(
            f"secure_aggregation.threshold={t} must be in [{low}, {degree}] for n={n} (the neighbour "
            f"degree {degree}; below {low} a lying server could unmask a client at "
            f"corrupt_fraction={gamma}); change threshold or raise secure_aggregation.neighbours"
        )
    return t


def check_sum_range(total: np.ndarray, *, n: int, config: SecAggConfig, integer: bool = False) -> tuple[int, str]:
    """Whether an unmasked sum is one honest inputs can produce: (total weight, problem or "").

    Each honest client adds w in [1, W] to the last word and w q_j with q_j in
    [0, 2^b - 1] to coordinate j, so the total weight lies in [n, n W] and each
    coordinate in [0, (2^b - 1) * weight]: the decoded mean of every coordinate is in
    [-clip_range, clip_range]. A masked input outside that encoding shows here only if it
    pushes the *sum* out of range; within it, it is indistinguishable from an honest one.

    Args:
        total: shape (L + 1,), the unmasked sum mod 2^m (last word: the total weight).
        n: |U3|, the number of inputs in the sum.
        integer: the inputs were ring elements with weight 1 (distributed DP): only the
            weight is checked (the sum wraps by design; the mechanism bounds how often).
    """
    weight = int(total[-1])
    cap = config.max_weight
    if not n <= weight <= n * cap:
        return weight, (
            f"total weight {weight} is outside [{n}, {n * cap}] for {n} survivors at max_weight={cap}: "
            "a client claimed a weight outside [1, max_weight]"
        )
    if integer:  # ring elements (distributed DP): any residue is a possible honest sum
        return weight, "" if weight == n else (
            f"total weight {weight} differs from the {n} survivors: integer inputs carry weight 1")
    limit = ((1 << config.bits) - 1) * weight  # < 2^m by the modulus headroom check
    high = np.flatnonzero(total[:-1] > total.dtype.type(limit))
    if high.size:
        return weight, (
            f"{high.size} coordinates (first: {int(high[0])}) exceed (2^bits - 1) * total weight = "
            f"{limit}: a client sent values outside the quantised range"
        )
    return weight, ""


def validate_upload(server: Any, msg: Message, *, seen: set[str]) -> None:
    """Check one upload against ``server``'s current phase; raises ``SecAggError``."""
    phase = server.phase
    if phase not in UPLOADS or not isinstance(msg, UPLOADS[phase]):
        raise SecAggError("out_of_phase", f"server in phase {phase!r} got {type(msg).__name__}")
    if msg.round_id != server.round_id:
        raise SecAggError(
            "wrong_round", f"message of round {msg.round_id}, this is round {server.round_id}"
        )
    sender = msg.client
    allowed = (
        set(server.cohort)
        if phase == "advertise_keys"
        else server.live[PHASES[PHASES.index(phase) - 1]]
    )
    if sender not in allowed:
        raise SecAggError(
            "not_member", f"{sender!r} is not a live member of the cohort in phase {phase!r}"
        )
    if sender in seen:
        raise SecAggError("replay", f"{sender!r} already sent its {phase!r} message")
    known = server.identities
    if isinstance(msg, AdvertiseKeys) and known is not None:
        payload = auth.keys_payload(server.digest, sender, msg.enc_public, msg.mask_public)
        if not auth.verify(known.get(sender), msg.signature, payload):
            raise SecAggError("bad_signature", f"{sender!r}'s keys are not signed by its enrolled identity")
    elif isinstance(msg, ConsistencySignature) and known is not None:
        payload = auth.survivors_payload(server.digest, server.survivors)
        if not auth.verify(known.get(sender), msg.signature, payload):
            raise SecAggError("bad_signature", f"{sender!r}'s survivor-set signature does not verify")
    elif isinstance(msg, ShareKeys):
        want = set(server.near(sender, server.live["advertise_keys"]))
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
        if msg.modulus_bits != server.config.modulus_bits or msg.values.size != server.vector_len + 1:
            raise SecAggError(
                "wrong_size",
                f"{sender!r} sent {msg.values.size} values mod 2^{msg.modulus_bits}, expected "
                f"{server.vector_len + 1} mod 2^{server.config.modulus_bits}",
            )
    elif isinstance(msg, UnmaskShares):
        _validate_unmask(server, msg)


def _validate_unmask(server: Any, msg: UnmaskShares) -> None:
    sender, u3 = msg.client, server.live["masked_input"]
    held = set(server.near(sender, server.live["share_keys"]))
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
    point = server.index[sender] + 1
    for _, raw in (*msg.seed_shares, *msg.key_shares):
        share = shamir.Share.from_bytes(raw, secret_len=crypto.KEY_BYTES)
        if share.x != point:
            raise SecAggError(
                "malformed", f"{sender!r} sent a share at x={share.x}, its point is {point}"
            )


__all__ = ["UPLOADS", "check_sum_range", "choose_threshold", "validate_upload"]
