"""Errors of the secure-aggregation protocol, each with a machine-readable ``reason``.

Reasons a single message is rejected (the sender is then treated as dropped):

- ``"version"``: the message was written by another protocol version.
- ``"malformed"``: the bytes do not parse as the claimed message type.
- ``"wrong_round"``: the message belongs to another round.
- ``"out_of_phase"``: the message type is not the one the receiver expects now.
- ``"not_member"``: the sender is not in the cohort, not a neighbour, or already dropped.
- ``"replay"``: the same sender already sent a message in this phase.
- ``"wrong_size"``: a key, share list or vector has the wrong length.
- ``"decrypt_failed"``: an AES-GCM tag did not verify (tampered or mis-routed share).
- ``"bad_params"``: round parameters a client refuses (e.g. no headroom for the sum, or
  quantisation settings that differ from the client's own config).
- ``"unsafe"``: a threshold or degree below what the client's own config says is safe
  (:func:`fedlm.privacy.secagg.graph.min_safe_threshold`); a lying server is refused here.
- ``"bad_signature"``: a neighbour's keys or survivor-set signature do not verify against
  its enrolled identity key (the server swapped or replayed them).
- ``"bad_state"``: saved client state (:meth:`SecAggClient.from_bytes`) is corrupt,
  inconsistent, or needs the identity key that was not passed back.

Reasons a round aborts (:class:`SecAggAborted`; nothing about any input is revealed):

- ``"below_threshold"``: too few clients (or too few shares of some secret) are left.
- ``"bad_share"``: reconstructed secrets do not match the advertised keys or seed
  commitments (a holder sent a wrong share).
- ``"out_of_range"``: the unmasked sum is impossible for honest inputs (total weight outside
  [|U3|, |U3| * max_weight], or a coordinate above (2^bits - 1) * total weight): some client
  sent a masked vector outside the bounded encoding; the round is refused.
- ``"inconsistent"``: the consistency check failed (Bonawitz et al. 2017, Sec. 4): the
  server showed this client another survivor set than the one it signed, or fewer than
  t of its neighbours signed the same set.
- ``"disconnected"``: the survivors' neighbour graph fell apart, so finishing would
  reveal partial sums of its components.
"""

from __future__ import annotations

from typing import Any

from fedlm.errors import ProtocolError


class SecAggError(ProtocolError):
    """A message was rejected by a secure-aggregation client or server.

    Attributes:
        reason: short tag from the module docstring's list.
        detail: human-readable explanation naming the sender, field and value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InsecureSecAggWarning(UserWarning):
    """A SecAgg+ party runs without what the malicious-server protection needs.

    Raised as a warning, e.g. by a client built without an identity key: it then runs
    the semi-honest protocol (Bonawitz et al. 2017, Sec. 6.2), secure only against a
    server that follows it.
    """


class SecAggAborted(SecAggError):
    """The round cannot finish without weakening privacy; no sum is returned.

    Attributes:
        phase: the phase at which the round stopped.
        stats: round statistics gathered so far (filled in by the simulator).
    """

    def __init__(self, reason: str, detail: str, *, phase: str) -> None:
        super().__init__(reason, f"round aborted in phase {phase!r}: {detail}")
        self.phase = phase
        self.stats: dict[str, Any] = {}


__all__ = ["InsecureSecAggWarning", "SecAggAborted", "SecAggError"]
