"""One SecAgg+ round between a server and in-process clients, driven phase by phase.

:class:`SecAggSession` is the transport of the simulator: it pumps the messages of one
round between a :class:`SecAggServer` and its :class:`SecAggClient` objects, encoding
every message to bytes and decoding it again on the way, so byte counts are exact and
the codec is exercised exactly as a network runtime would. It splits the round where
a training loop needs it to:

1. :meth:`start` runs the key phases (setup, ``advertise_keys``, ``share_keys``) before
   local training; they do not depend on the update.
2. :meth:`mask` is one client's ``masked_input`` (called from its client pipeline).
3. :meth:`finish` is the server's collection of masked vectors, the clients' unmask
   answers and the reconstruction of the sum.

Dropouts are injected by withholding a client's upload of a given phase (explicitly, or
drawn from the config's ``dropout_rate`` / ``phase_dropout`` with a seed).

Phase bookkeeping in :attr:`SecAggSession.stats` (phase p covers the server's message
that starts it, the clients' uploads of p and the server's processing of them):

==================  =================  ===============  =====================
phase               down (per client)  up               server work
==================  =================  ===============  =====================
``advertise_keys``  Setup              AdvertiseKeys    route public keys
``share_keys``      NeighbourKeys      ShareKeys        route ciphertexts
``masked_input``    ForwardedShares    MaskedInput      collect vectors
``unmasking``       UnmaskRequest      UnmaskShares     reconstruct, unmask, sum
==================  =================  ===============  =====================
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.client import SecAggClient
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.messages import ForwardedShares, MaskedInput, Message, decode
from fedlm.privacy.secagg.server import PHASES, AggregateResult, SecAggServer


def draw_dropouts(
    cohort: Sequence[str], *, config: SecAggConfig, rng: np.random.Generator
) -> dict[str, set[str]]:
    """Seeded dropouts from the config: phase -> ids that go silent before that upload.

    ``dropout_rate``: each client drops with that probability at a uniformly drawn phase.
    ``phase_dropout``: exactly ``round(fraction * n)`` further clients (drawn without
    replacement from those not yet dropping) go silent at each listed phase.
    """
    drop_at: dict[str, set[str]] = {p: set() for p in PHASES}
    for cid in cohort:  # one draw per client, at a uniform phase
        if rng.random() < config.dropout_rate:
            drop_at[PHASES[rng.integers(len(PHASES))]].add(cid)
    for phase in PHASES:
        fraction = config.phase_dropout.get(phase, 0.0)
        if fraction <= 0:
            continue
        taken = set().union(*drop_at.values())
        free = [c for c in cohort if c not in taken]
        count = min(len(free), round(fraction * len(cohort)))
        picked = rng.choice(len(free), count, replace=False) if count else []
        drop_at[phase].update(free[i] for i in sorted(picked))
    return drop_at


class SecAggSession:
    """One SecAgg+ round over in-process clients (see the module docstring).

    Args:
        cohort: client ids; their order fixes mask signs and share points.
        vector_len: L, float values per client.
        config: protocol settings.
        round_id: binds keys and ciphertexts to this round.
        seed: makes the graph, the drawn dropouts and the rounding noise reproducible
            (keys and masks always come from the OS); None draws fresh randomness.
        dropouts: phase -> ids that go silent before sending that phase's upload, on top
            of those drawn from the config.

    Attributes:
        server: the protocol server.
        stats: ``cohort_size``, ``degree``, ``threshold``, ``modulus_bits``, ``bits``,
            ``phases`` (phase -> ``dropouts``, ``bytes_up``, ``bytes_down``,
            ``client_seconds`` (sum over clients), ``client_seconds_max``,
            ``server_seconds``), ``client_errors`` ((client, phase, reason) tuples),
            ``rejected`` ((client, reason) of uploads the server refused), then
            ``upload_expansion`` (masked-input bytes over 4 L), and after :meth:`finish`
            ``survivors``, ``survivor_ids`` and ``total_weight``; ``aborted``
            (``{"phase", "reason", "detail"}``) when the round gave up.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        *,
        vector_len: int,
        config: SecAggConfig,
        round_id: int = 1,
        seed: int | None = None,
        dropouts: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.cohort = tuple(cohort)
        unknown = set(dropouts or {}) - set(PHASES)
        if unknown:
            raise ConfigError(f"dropout phases {sorted(unknown)} are not in {list(PHASES)}")
        rng = np.random.default_rng(seed)
        self.drop_at = draw_dropouts(self.cohort, config=config, rng=rng)
        for phase, ids in (dropouts or {}).items():
            self.drop_at[phase].update(ids)
        self.vector_len = vector_len
        self.server = SecAggServer(
            self.cohort,
            vector_len=vector_len,
            config=config,
            round_id=round_id,
            graph_seed=int(rng.integers(2**63)) if seed is not None else None,
        )
        self.clients = {
            cid: SecAggClient(cid, rng=np.random.default_rng([seed, i]) if seed is not None else None)
            for i, cid in enumerate(self.cohort)
        }
        self.stats: dict[str, Any] = {
            "cohort_size": len(self.cohort),
            "degree": self.server.degree,
            "threshold": self.server.threshold,
            "modulus_bits": config.modulus_bits,
            "bits": config.bits,
            "phases": {
                p: {
                    "dropouts": 0,
                    "bytes_up": 0,
                    "bytes_down": 0,
                    "client_seconds": 0.0,
                    "client_seconds_max": 0.0,
                    "server_seconds": 0.0,
                }
                for p in PHASES
            },
            "client_errors": [],
            "rejected": [],
        }
        self._forwarded: dict[str, ForwardedShares] = {}
        self._sent: set[str] = set()

    # -- phases 1-2: keys, before local training --------------------------------------
    def start(self) -> None:
        """Run setup, ``advertise_keys`` and ``share_keys``; deliver the forwarded shares.

        Raises:
            SecAggAborted: too few clients are left; ``.stats`` holds the figures.
        """
        with self._guard():
            ph = self.stats["phases"]["advertise_keys"]
            t0 = time.perf_counter()
            down: Mapping[str, Message] = self.server.setup()
            ph["server_seconds"] += time.perf_counter() - t0
            handlers = {
                "advertise_keys": lambda c, m: c.advertise_keys(m),
                "share_keys": lambda c, m: c.share_keys(m),
            }
            steps = {
                "advertise_keys": self.server.advertise_keys,
                "share_keys": self.server.share_keys,
            }
            for phase in ("advertise_keys", "share_keys"):
                ph = self.stats["phases"][phase]
                uploads = []
                for cid, msg in down.items():
                    received = self._wire(msg, ph, "bytes_down")
                    if cid in self.drop_at[phase]:
                        continue
                    reply = self._client_call(phase, cid, handlers[phase], received)
                    if reply is not None:
                        uploads.append(self._wire(reply, ph, "bytes_up"))
                down = self._server_call(phase, steps[phase], uploads)
            ph = self.stats["phases"]["masked_input"]
            self._forwarded = {
                cid: self._wire(msg, ph, "bytes_down")  # type: ignore[misc]
                for cid, msg in down.items()
            }

    def will_upload(self, client_id: str) -> bool:
        """Whether ``client_id`` got its forwarded shares and is not set to drop before masking."""
        return client_id in self._forwarded and client_id not in self.drop_at["masked_input"]

    # -- phase 3: one client's masked input --------------------------------------------
    def mask(self, client_id: str, vector: np.ndarray, *, weight: int = 1) -> bytes | None:
        """Client ``client_id`` masks its vector; returns the upload's bytes.

        Args:
            client_id: a cohort member for which :meth:`will_upload` is true.
            vector: float array of shape (vector_len,).
            weight: integer in [1, config.max_weight], folded in on the client.

        Returns:
            The encoded :class:`MaskedInput`, or None when the client refused (the reason
            is in ``stats["client_errors"]``); a refusing client counts as dropped.
        """
        if not self.will_upload(client_id):
            raise SecAggError(
                "not_member", f"{client_id!r} is not a live member of the round's masked_input phase"
            )
        if client_id in self._sent:
            raise SecAggError("replay", f"{client_id!r} already masked its input this round")
        self._sent.add(client_id)
        ph = self.stats["phases"]["masked_input"]
        reply = self._client_call(
            "masked_input",
            client_id,
            lambda c, m: c.masked_input(m, vector, weight=weight),
            self._forwarded[client_id],
        )
        if reply is None:
            return None
        data = reply.to_bytes()
        ph["bytes_up"] += len(data)
        self.stats["upload_expansion"] = len(data) / (4.0 * self.vector_len)
        return data

    # -- phases 3-4: the server's side ---------------------------------------------------
    def finish(self, uploads: Iterable[bytes]) -> AggregateResult:
        """Collect the masked inputs, ask survivors to unmask, return the cohort's sum.

        An upload that does not parse or that the server rejects (wrong size, not a live
        member, a second one from the same sender) is dropped and recorded in
        ``stats["rejected"]``; its sender counts as dropped.

        Raises:
            SecAggAborted: too many dropouts, a split survivor graph or inconsistent
                shares; nothing about any input is revealed and ``.stats`` holds the figures.
        """
        with self._guard():
            accepted = self._accept(uploads)
            requests = self._server_call("masked_input", self.server.masked_input, accepted.values())
            ph = self.stats["phases"]["unmasking"]
            answers = []
            for cid, msg in requests.items():
                received = self._wire(msg, ph, "bytes_down")
                if cid in self.drop_at["unmasking"]:
                    continue
                reply = self._client_call("unmasking", cid, lambda c, m: c.unmask(m), received)
                if reply is not None:
                    answers.append(self._wire(reply, ph, "bytes_up"))
            result = self._server_call("unmasking", self.server.unmask, answers)
        self.stats["survivors"] = len(result.survivors)
        self.stats["survivor_ids"] = list(result.survivors)
        self.stats["total_weight"] = result.total_weight
        return result

    # -- plumbing ------------------------------------------------------------------------
    def _accept(self, uploads: Iterable[bytes]) -> dict[str, MaskedInput]:
        """Parse and check masked inputs; refused ones go to ``stats["rejected"]``."""
        ph = self.stats["phases"]["masked_input"]
        t0 = time.perf_counter()
        accepted: dict[str, MaskedInput] = {}
        for data in uploads:
            try:
                msg = decode(data)
            except SecAggError as exc:
                self.stats["rejected"].append(("?", exc.reason))
                continue
            try:
                self.server.check(msg)
                if msg.client in accepted:
                    raise SecAggError("replay", f"{msg.client!r} sent two masked inputs")
            except SecAggError as exc:
                self.stats["rejected"].append((msg.client, exc.reason))
                continue
            accepted[msg.client] = msg  # type: ignore[assignment]
        ph["server_seconds"] += time.perf_counter() - t0
        return accepted

    def _client_call(self, phase: str, cid: str, handler: Any, msg: Message) -> Message | None:
        ph = self.stats["phases"][phase]
        t0 = time.perf_counter()
        try:
            return handler(self.clients[cid], msg)
        except SecAggError as exc:  # the client refuses or aborts: it is a dropout
            self.stats["client_errors"].append((cid, phase, exc.reason))
            return None
        finally:
            spent = time.perf_counter() - t0
            ph["client_seconds"] += spent
            ph["client_seconds_max"] = max(ph["client_seconds_max"], spent)

    def _server_call(self, phase: str, step: Any, uploads: Iterable[Message]) -> Any:
        ph = self.stats["phases"][phase]
        t0 = time.perf_counter()
        try:
            return step(uploads)
        finally:
            ph["server_seconds"] += time.perf_counter() - t0
            ph["dropouts"] = len(self.server.dropped[phase])

    def _guard(self) -> _AbortRecorder:
        return _AbortRecorder(self.stats)

    @staticmethod
    def _wire(msg: Message, ph: dict[str, Any], key: str) -> Message:
        """Encode, count and decode one message, as a transport would."""
        data = msg.to_bytes()
        ph[key] += len(data)
        return decode(data)


class _AbortRecorder:
    """Context manager: on ``SecAggAborted`` record the abort in the stats and attach them."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, SecAggAborted):
            self.stats["survivors"] = 0
            self.stats["aborted"] = {"phase": exc.phase, "reason": exc.reason, "detail": exc.detail}
            exc.stats = self.stats
        return False


__all__ = ["SecAggSession", "draw_dropouts"]
