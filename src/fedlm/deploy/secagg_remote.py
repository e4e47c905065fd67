"""SecAgg+ over Flower Messages: the same state machines as the simulator, on the wire.

Server side, :class:`RemoteSecAgg` stands in for ``SecAggRounds`` in a server-side
``Simulation``: its :meth:`~RemoteSecAgg.open` runs the key phases by exchanging
``query.secagg_keys`` (Setup -> AdvertiseKeys) and ``query.secagg_share``
(NeighbourKeys -> ShareKeys) messages, and puts a :class:`RemoteSession` in the plan.
The train message then carries each client's ForwardedShares; the client's MaskStage
masks through :class:`ClientMask`. The server's UnmaskStage calls
:meth:`RemoteSession.finish`, which sends ``query.secagg_unmask`` (UnmaskRequest ->
UnmaskShares) to the survivors and reconstructs the sum. A node that does not answer in
time is a dropout of that phase, exactly as a withheld upload in the simulator. A reply
is attributed to the node the transport says sent it: one carrying another client's
message (a replayed AdvertiseKeys, say) is refused as ``wrong_sender`` and its node
counts as dropped, as does one that does not parse.

Client side, a :class:`~fedlm.privacy.secagg.client.SecAggClient` lives on the client's
disk between messages (Flower starts a process per message): :class:`ClientStore`.
The seeds follow ``SecAggSession``'s derivation, so graph and rounding noise match the
simulator's for the same config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlm.config.schema import ExperimentConfig
from fedlm.config.secagg import SecAggConfig
from fedlm.deploy.messaging import Courier
from fedlm.deploy.wire import field_bytes
from fedlm.errors import FedlmError
from fedlm.privacy.secagg.client import SecAggClient
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.messages import ForwardedShares, Setup, decode
from fedlm.privacy.secagg.server import PHASES, AggregateResult
from fedlm.privacy.secagg.session import SecAggSession
from fedlm.privacy.secagg.stages import SecAggRound
from fedlm.privacy.secagg.state import write_private

if TYPE_CHECKING:
    from fedlm.stages import RoundPlan

log = logging.getLogger(__name__)

KEYS, SHARE = "query.secagg_keys", "query.secagg_share"
CONSISTENCY, UNMASK = "query.secagg_consistency", "query.secagg_unmask"
FORWARDED = "secagg_forwarded"  # train message field: the client's ForwardedShares bytes


class RemoteSession(SecAggSession):
    """One SecAgg+ round whose clients are remote nodes (server side).

    The simulator's session with the transport swapped: its server, seeds, statistics,
    checks of masked inputs and abort bookkeeping are reused; its in-process clients are
    not (each phase's messages go to the nodes at once, through the courier). Dropouts
    are the nodes that do not answer: the config's injected ``dropout_rate`` and
    ``phase_dropout`` stay simulation-only.
    """

    def __init__(self, config: ExperimentConfig, cohort: tuple[str, ...], *, vector_len: int, round_id: int,
                 courier: Courier) -> None:
        from fedlm.capabilities.secagg import session_seed

        self.seed = session_seed(config, round_id)
        super().__init__(cohort, vector_len=vector_len, config=config.secure_aggregation, round_id=round_id,
                         seed=self.seed)
        self.drop_at = {p: set() for p in PHASES}
        self.courier, self.round_id = courier, round_id
        self.forwarded: dict[str, bytes] = {}

    def start(self) -> None:
        """Setup, ``advertise_keys`` and ``share_keys`` over the network."""
        with self._guard():
            down = self._server_call("advertise_keys", lambda _: self.server.setup(), [])
            for phase, action, step in (("advertise_keys", KEYS, self.server.advertise_keys),
                                        ("share_keys", SHARE, self.server.share_keys)):
                uploads = self._round_trip(phase, action, down)
                down = self._server_call(phase, step, uploads)
            self._forwarded = dict(down)
            self.forwarded = {cid: msg.to_bytes() for cid, msg in down.items()}
            self.stats["phases"]["masked_input"]["bytes_down"] += sum(len(b) for b in self.forwarded.values())

    def finish(self, uploads: Iterable[bytes]) -> AggregateResult:
        """Collect the masked inputs, have the survivors unmask, return the sum."""
        uploads = list(uploads)
        with self._guard():
            self.stats["phases"]["masked_input"]["bytes_up"] += sum(len(d) for d in uploads)
            if uploads:
                self.stats["upload_expansion"] = len(uploads[0]) / (4.0 * self.vector_len)
            accepted = self._accept(uploads)
            requests = self._server_call("masked_input", self.server.masked_input, accepted.values())
            if self.server.phase == "consistency":  # the clients signed their keys: Bonawitz et al.'s check
                signed = self._round_trip("consistency", CONSISTENCY, requests)
                requests = self._server_call("consistency", self.server.consistency, signed)
            answers = self._round_trip("unmasking", UNMASK, requests)
            result = self._server_call("unmasking", self.server.unmask, answers)
        self.stats["survivors"] = len(result.survivors)
        self.stats["survivor_ids"] = list(result.survivors)
        self.stats["total_weight"] = result.total_weight
        return result

    def _round_trip(self, phase: str, action: str, down: dict) -> list:
        """Send one phase's server messages to the nodes; decode the answers that came back."""
        ph = self.stats["phases"][phase]
        meta = json.dumps({"seed": self.seed}).encode()  # the rounding-noise seed, derived from the config
        requests = {cid: {"secagg": msg.to_bytes(), "meta": meta} for cid, msg in down.items()}
        t0 = time.perf_counter()
        got = self.courier.exchange(action, requests, group=str(self.round_id))
        spent = time.perf_counter() - t0  # wall time of the exchange (the clients work in parallel)
        ph["client_seconds"] += spent
        ph["client_seconds_max"] = max(ph["client_seconds_max"], spent)
        ph["bytes_down"] += sum(len(r["secagg"]) for r in requests.values())
        self.stats["client_errors"].extend((cid, phase, why) for cid, why in got.missing.items() if why.startswith("error"))
        out = []
        for cid, reply in got.replies.items():  # cid: the node the transport says answered
            data = reply.get("secagg", b"")
            ph["bytes_up"] += len(data) if isinstance(data, bytes) else 0
            try:
                msg = decode(field_bytes(reply, "secagg", what="a SecAgg+ reply"))
            except FedlmError as exc:  # unreadable: that node drops out of the phase
                self.stats["rejected"].append((cid, getattr(exc, "reason", "malformed")))
                continue
            if getattr(msg, "client", None) != cid:  # e.g. a node replaying another node's keys
                self.stats["rejected"].append((cid, "wrong_sender"))
                log.warning("round %s %s: node of %r sent a message of %r; dropped", self.round_id, phase, cid,
                            str(getattr(msg, "client", "?"))[:60])
                continue
            out.append(msg)
        return out


class RemoteSecAgg:
    """Drop-in for ``SecAggRounds`` on a deployed server: opens a :class:`RemoteSession`."""

    def __init__(self, config: ExperimentConfig, vector_len: int, courier: Courier) -> None:
        self.config, self.vector_len, self.courier = config, vector_len, courier

    def open(self, plan: RoundPlan) -> RoundPlan:
        from fedlm.capabilities.secagg import too_small

        if len(plan.cohort) < 3:
            return plan.with_fields(SecAggRound(too_small(plan.cohort)))
        session = RemoteSession(self.config, plan.cohort, vector_len=self.vector_len, round_id=plan.round,
                                courier=self.courier)
        with contextlib.suppress(SecAggAborted):  # recorded in session.stats["aborted"]
            session.start()
        return plan.with_fields(SecAggRound(session))


# -- client side -----------------------------------------------------------------------
class ClientStore:
    """A client's SecAgg+ state machine on its own disk, one file per round, mode 0600.

    Args:
        folder: where the state files live.
        client_id: the client.
        config: the federation's ``secure_aggregation`` section: the client checks every Setup
            against it (threshold, degree, quantisation) itself.
        identity: this node's long-term Ed25519 identity key (raw 32 bytes), or None to run
            the semi-honest protocol (a warning says so).
        known: the enrolment map, client id -> identity public key, received over a channel
            the server does not control.
    """

    def __init__(self, folder: Path, client_id: str, *, config: SecAggConfig | None = None,
                 identity: bytes | None = None, known: dict[str, bytes] | None = None) -> None:
        self.folder, self.client_id = folder, client_id
        self.config, self.identity, self.known = config, identity, known
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("secagg_round_*.pkl"):  # an older fedlm's pickled state: never read
            old.unlink(missing_ok=True)

    def _path(self, round_id: int) -> Path:
        return self.folder / f"secagg_round_{round_id}.state"

    def fresh(self, setup: Setup, seed: int) -> SecAggClient:
        """A new state machine seeded as the simulator seeds cohort member ``i`` (``seed``: the session's).

        Its keys come from the OS, never from ``seed`` (which only seeds the rounding noise).
        A round id may come again when the server resumes from a checkpoint: the client then
        starts afresh with new keys, and the neighbours' signatures bind theirs to this Setup.
        """
        for old in self.folder.glob("secagg_round_*.state"):  # earlier rounds' keys are no longer needed
            old.unlink(missing_ok=True)
        i = setup.cohort.index(self.client_id) if self.client_id in setup.cohort else len(setup.cohort)
        return SecAggClient(self.client_id, rng=np.random.default_rng([seed, i]), config=self.config,
                            identity=self.identity, known_identities=self.known if self.identity else None)

    def load(self, round_id: int) -> SecAggClient:
        path = self._path(round_id)
        if not path.is_file():
            raise SecAggError("out_of_order", f"no SecAgg+ state for round {round_id} on this client")
        return SecAggClient.from_bytes(path.read_bytes(), identity=self.identity)

    def save(self, client: SecAggClient, round_id: int) -> None:
        write_private(self._path(round_id), client.to_bytes())


def client_step(store: ClientStore, action: str, data: bytes, *, seed: int = 0) -> bytes:
    """One key, consistency or unmask phase on the client: decode, step the state machine, encode."""
    msg = decode(data)
    if action == KEYS:
        if not isinstance(msg, Setup):
            raise SecAggError("unexpected", f"{action} carries a {type(msg).__name__}")
        client = store.fresh(msg, seed)
        reply = client.advertise_keys(msg)
    else:
        client = store.load(msg.round_id)
        reply = client.handle(msg)
    store.save(client, msg.round_id)
    return reply.to_bytes()


class ClientMask:
    """What ``MaskStage`` needs from a session, on a deployed client."""

    def __init__(self, store: ClientStore, forwarded: bytes) -> None:
        self.store = store
        msg = decode(forwarded)
        if not isinstance(msg, ForwardedShares):
            raise SecAggError("unexpected", f"the train message carries a {type(msg).__name__}, not ForwardedShares")
        self.forwarded, self.round_id = msg, msg.round_id
        self.stats: dict[str, Any] = {"client_errors": []}

    def will_upload(self, client_id: str) -> bool:
        return client_id == self.store.client_id

    def mask(self, client_id: str, vector: np.ndarray, *, weight: int = 1) -> bytes | None:
        client = self.store.load(self.round_id)
        try:
            reply = client.masked_input(self.forwarded, vector, weight=weight)
        except SecAggError as exc:
            self.stats["client_errors"].append((client_id, "masked_input", exc.reason))
            return None
        self.store.save(client, self.round_id)
        return reply.to_bytes()


__all__ = ["CONSISTENCY", "FORWARDED", "KEYS", "SHARE", "UNMASK", "ClientMask", "ClientStore", "RemoteSecAgg", "RemoteSession",
           "client_step"]
