"""One deployed client: its data, its state and its part of each round, from its disk.

Settings come from two places. The run config (the same for every node) carries the
experiment as YAML under ``fedlm-config``. The node config (set per machine with
``flower-supernode --node-config``) says where this organisation keeps its data:

``data-path``
    a JSONL file of this client's own rows, formatted with ``config.data``'s fields;
``client-id``
    the client's id in the federation (default: the file's stem);
``client-index``
    its position in the sorted id list of the partition, which seeds the
    train/held-out split (default 0; ``fedlm deploy local`` sets it so a deployed
    run splits exactly as the simulator);
``partition-id``
    in Flower's simulation engine, instead of the above: the client's entry in the
    ``clients.json`` manifest of the run config's ``data-dir`` (:mod:`.local_data`);
``state-dir``
    where the client keeps its prepared examples, its personal/optimizer state and its
    SecAgg+ keys between messages (default: ``<data-path>.fedlm/`` beside the data);
``identity-key`` and ``enrolment``
    the node's long-term SecAgg+ identity key (raw Ed25519, 32 bytes) and the federation's
    enrolment map (JSON: client id -> identity public key, hex), received out of band. With
    both, the client signs its SecAgg+ keys and checks its neighbours' (a server that swaps
    keys is refused); without, it runs the semi-honest protocol and warns.

Flower's default isolation starts a process per message, so everything a later message
needs is on disk: prepared examples are cached by a digest of the data file and
``config.data``, the client's state after each round is kept by round. A long-lived
ClientApp process (:mod:`.worker`, or a Ray actor in Flower's simulation engine) also keeps
the parsed config, the prepared examples and the model in memory between messages; the
engine is built afresh for each message, so a warm process computes what a cold one does.
Every file here is written with mode 0600 in a format that cannot run code
(:mod:`.node_state`; no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fedlm.config.loader import validate_config
from fedlm.config.schema import ExperimentConfig
from fedlm.deploy import checks, node_state, wire
from fedlm.deploy.secagg_remote import FORWARDED, ClientMask, ClientStore, client_step
from fedlm.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:  # the data and model stack load only in the messages that train or evaluate
    from fedlm.data.federated import ClientData

log = logging.getLogger(__name__)

CONFIG_KEY = "fedlm-config"  # run config: the experiment as YAML text
EXAMPLES, STATE = "examples", "client_state"  # node_state kinds
_WARM_LIMIT = 8  # configs and prepared clients a long-lived process keeps
_CONFIGS: OrderedDict[str, ExperimentConfig] = OrderedDict()
_DATA: OrderedDict[str, ClientData] = OrderedDict()


def _remember(cache: OrderedDict, key: str, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _WARM_LIMIT:
        cache.popitem(last=False)
    return value


def config_from_run(run_config: Mapping[str, Any]) -> ExperimentConfig:
    text = run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"the Flower run config lacks {CONFIG_KEY!r}; write the app with `fedlm deploy app`")
    if text in _CONFIGS:
        return _CONFIGS[text]
    return _remember(_CONFIGS, text, validate_config(yaml.safe_load(text) or {}))


class ClientNode:
    """A client's view of a deployed run (rebuilt for every message; heavy parts are cached)."""

    def __init__(self, run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> None:
        self.config = config_from_run(run_config)
        node_config = _from_partition(run_config, node_config)
        path = node_config.get("data-path")
        if not path:
            raise ConfigError("this SuperNode has no data-path; start it with --node-config 'data-path=\"/path/rows.jsonl\"'")
        self.data_path = Path(str(path)).expanduser()
        self.client_id = str(node_config.get("client-id") or self.data_path.stem)
        self.index = int(node_config.get("client-index", 0))
        self.state_dir = Path(str(node_config.get("state-dir") or f"{self.data_path}.fedlm")).expanduser()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        node_state.forget_pickles(self.state_dir)
        identity, known = _identity(node_config)
        self.secagg = ClientStore(self.state_dir / "secagg", self.client_id,
                                  config=self.config.secure_aggregation, identity=identity, known=known)
        self._data: ClientData | None = None

    # -- data and state ------------------------------------------------------------------
    def data(self) -> ClientData:
        """This client's examples, prepared once and cached in ``state-dir`` (and in memory).

        A damaged cache file is reported and rebuilt from the data file: it holds nothing
        the data file does not.
        """
        if self._data is not None:
            return self._data
        if not self.data_path.is_file():
            raise DataError(f"data-path {self.data_path} does not exist on this node")
        raw = self.data_path.read_bytes()
        key = hashlib.sha256(raw + json.dumps([self.config.data.model_dump(mode="json"), self.config.model.name,
                                               self.index], sort_keys=True).encode()).hexdigest()[:16]
        if key in _DATA:
            self._data = _DATA[key]
            return self._data
        cached = self.state_dir / f"examples-{key}.state"
        if cached.is_file():
            try:
                self._data = _remember(_DATA, key, _client_data(node_state.read_tree(cached, kind=EXAMPLES)))
                return self._data
            except CheckpointError as exc:
                log.warning("%s; preparing the examples again from %s", exc, self.data_path)
        from fedlm.data.federated import build_client_data
        from fedlm.models.loading import load_tokenizer

        rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        data = build_client_data(self.config.data, rows, load_tokenizer(self.config.model.name), index=self.index)
        if data is None:
            raise DataError(f"{self.data_path} yields fewer than 2 examples; a client needs one to train and one to hold out")
        node_state.write_tree(cached, {"train": data.train, "heldout": data.heldout, "labels": dict(data.labels),
                                       "chars": data.chars, "heldout_rows": data.heldout_rows}, kind=EXAMPLES)
        self._data = _remember(_DATA, key, data)
        return data

    # The state after round r is kept as ``client_state-r{r}.state``. A round re-run after
    # the server resumed from an earlier checkpoint starts from the state of the newest
    # round before it, as the simulator does, not from the state its lost first run left.
    def _state_path(self, round_id: int) -> Path:
        return self.state_dir / f"client_state-r{round_id:06d}.state"

    def _saved_rounds(self) -> list[int]:
        rounds = []
        for p in self.state_dir.glob("client_state-r*.state"):
            digits = p.stem.rsplit("-r", 1)[1]
            if digits.isdigit():
                rounds.append(int(digits))
        return sorted(rounds)

    def load_state(self, before_round: int) -> dict | None:
        """The state this client kept after its newest round before ``before_round`` (None: none yet).

        Raises:
            CheckpointError: that file is damaged. Starting from an older state or none would
                silently change the client's training, so it is not treated as absent: the
                client sends nothing until an operator removes the file (named in the error).
        """
        earlier = [r for r in self._saved_rounds() if r < before_round]
        if not earlier:
            return None
        path = self._state_path(earlier[-1])
        state = node_state.read_tree(path, kind=STATE)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a client state")
        return state

    def save_state(self, state: dict, round_id: int) -> None:
        """Keep ``state`` as the state after ``round_id``, and enough older ones to resume from.

        A server resumes from a checkpoint at most ``output.checkpoint_every`` rounds old, so
        that many newer states plus one older are kept.
        """
        node_state.write_tree(self._state_path(round_id), state, kind=STATE)
        keep = self.config.output.checkpoint_every + 1
        for old in self._saved_rounds()[:-keep]:
            self._state_path(old).unlink(missing_ok=True)

    def mark(self, phase: str, round_id: int) -> None:
        """Progress marker (``progress.json``, mode 0600): what this client last started."""
        node_state.write_json(self.state_dir / "progress.json", {"phase": phase, "round": round_id})

    # -- handlers ------------------------------------------------------------------------
    def register(self) -> wire.Fields:
        from fedlm.data.federated import _resolve_format  # the simulator's own choice of format
        from fedlm.deploy.parts import client_sizes

        data = self.data()
        meta = {**client_sizes(self.client_id, data), "format": _resolve_format(self.config.data, _first_row(self.data_path))}
        return {"meta": json.dumps(meta).encode()}

    def secagg_step(self, action: str, fields: wire.Fields) -> wire.Fields:
        self.mark(action, -1)
        meta = wire.read_meta(fields, limit=checks.META_LIMIT)
        seed = checks.as_int(meta.get("seed", 0), "secagg seed", lo=None)
        return {"secagg": client_step(self.secagg, action, wire.field_bytes(fields, "secagg"), seed=seed),
                "meta": b"{}"}

    def train(self, fields: wire.Fields) -> wire.Fields:
        """Local training and the client stages of one round (``Simulation.client_round``)."""
        from fedlm.compression.stages import decode_broadcast
        from fedlm.engine.simulation import ClientOutcome
        from fedlm.privacy.secagg.stages import SecAggRound

        meta = wire.read_meta(fields, limit=checks.REQUEST_META_LIMIT)
        sim = self._engine(meta)
        plan = wire.plan_from_fields(fields, sim_field_types(sim), shapes=sim.model.shapes())
        self.mark("train", plan.round)
        received = decode_broadcast(sim.down_codec, wire.field_bytes(fields, "broadcast"))
        if FORWARDED in fields:  # a SecAgg+ round: this client masks with its own state machine
            plan = plan.with_fields(SecAggRound(ClientMask(self.secagg, wire.field_bytes(fields, FORWARDED))))
        try:
            kept = self.load_state(plan.round)
        except CheckpointError as exc:  # reported to the server as this client's failure, with the reason
            log.error("%s; client %r sends nothing until the file is removed", exc, self.client_id)
            return wire.outcome_to_fields(ClientOutcome(self.client_id, failure={
                "client_id": self.client_id, "reason": "damaged_state", "detail": str(exc)[:300], "side": "client"}))
        outcome = sim.client_round(plan, self.client_id, received, kept)
        if outcome.state is not None:
            self.save_state(outcome.state, plan.round)
        self.mark("trained", plan.round)
        return wire.outcome_to_fields(outcome)

    def evaluate(self, fields: wire.Fields) -> wire.Fields:
        """Held-out loss sums of the broadcast global state on this client's data, or a
        capability's end-of-run answer.

        A request naming a ``capability`` (e.g. personalisation at the end of a run) is
        answered by that capability's ``client_query`` on this node, from the client's state
        on its disk, exactly as the simulator answers it in process; only what the
        capability returns (sums, a choice) leaves the client.
        """
        from fedlm.deploy.model_cache import adapted_model
        from fedlm.eval.metrics import score_lm

        asked = wire.read_meta(fields, limit=checks.REQUEST_META_LIMIT)
        model = adapted_model(self.config, warm=True)
        global_state = wire.tensors_from_bytes(wire.field_bytes(fields, "state"), shapes=model.shapes(),
                                               what="the global state")
        if asked.get("capability"):
            sim = self._engine(asked)
            cap = next((c for c in sim.capabilities if c.name == asked["capability"]), None)
            kept = self.load_state(before_round=sys.maxsize)
            request = checks.as_dict(asked.get("request") or {}, "request")
            answer = cap.client_query(self.client_id, global_state, kept, request) if cap else {}
            return {"meta": json.dumps({"client_id": self.client_id, "answer": answer}).encode()}
        ev = self.config.eval
        model.set_state(global_state)
        score = score_lm(model.model, self.data().heldout, pad_id=model.tokenizer.pad_token_id,
                         batch_size=ev.batch_size, max_batches=ev.max_batches_per_client)
        sums = {"loss_sum": score.loss_sum, "correct": score.correct, "tokens": score.tokens}
        return {"meta": json.dumps({"client_id": self.client_id, **sums}).encode()}

    def _engine(self, meta: dict[str, Any]):
        """The client half of the engine over this client's own data (``meta``: the federation's sizes)."""
        from fedlm.deploy.model_cache import adapted_model
        from fedlm.deploy.parts import client_simulation

        sizes = _sizes(meta.get("clients"))
        if self.client_id not in sizes:
            raise ConfigError(f"the server's federation does not list this client ({self.client_id!r})")
        fmt = checks.as_str(meta.get("format"), "format", max_len=64)
        return client_simulation(self.config, adapted_model(self.config, warm=True), sizes, self.client_id,
                                 self.data(), fmt)


def sim_field_types(sim) -> dict[str, type]:
    """The plan field types this client's capabilities declare, by name (what a plan may carry)."""
    return {kind.__name__: kind for cap in sim.capabilities for kind in cap.plan_fields}


def _sizes(clients: Any) -> dict[str, dict[str, Any]]:
    """The federation's client sizes as the server sent them, checked."""
    out = {}
    for cid, s in checks.as_dict(clients, "clients").items():
        s = checks.as_dict(s, f"sizes of {str(cid)[:40]!r}")
        out[checks.as_str(cid, "client id")] = {
            "train": checks.as_int(s.get("train"), "train size"), "heldout": checks.as_int(s.get("heldout"), "heldout"),
            "chars": checks.as_int(s.get("chars"), "chars"), "labels": checks.scalars(s.get("labels") or {}, "labels")}
    return out


def _client_data(tree: Any) -> ClientData:
    """A :class:`ClientData` from its cached tree; raises CheckpointError when it does not fit."""
    from fedlm.data.federated import ClientData

    ok = (isinstance(tree, dict) and all(isinstance(tree.get(k), list) for k in ("train", "heldout", "heldout_rows"))
          and isinstance(tree.get("labels"), dict) and isinstance(tree.get("chars"), int)
          and all(isinstance(e, dict) and all(isinstance(v, list) for v in e.values())
                  for e in tree["train"] + tree["heldout"]))
    if not ok:
        raise CheckpointError("the cached examples do not have the expected fields")
    return ClientData(tree["train"], tree["heldout"], Counter(tree["labels"]), tree["chars"], tree["heldout_rows"])


def _identity(node_config: Mapping[str, Any]) -> tuple[bytes | None, dict[str, bytes] | None]:
    """The node's identity key and the enrolment map, from ``identity-key`` and ``enrolment`` (both or neither)."""
    key, enrolment = node_config.get("identity-key"), node_config.get("enrolment")
    if not key and not enrolment:
        return None, None
    if not (key and enrolment):
        raise ConfigError("set both identity-key and enrolment in the node config (or neither, for the "
                          "semi-honest protocol)")
    from fedlm.deploy.local_data import read_enrolment

    path = Path(str(key)).expanduser()
    if not path.is_file():
        raise ConfigError(f"identity-key {path} does not exist on this node")
    return path.read_bytes(), read_enrolment(Path(str(enrolment)).expanduser())


def _from_partition(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """In Flower's simulation engine a node has only ``partition-id``: look it up in ``data-dir``."""
    if node_config.get("data-path") or "partition-id" not in node_config or not run_config.get("data-dir"):
        return node_config
    from fedlm.deploy.local_data import ENROLMENT, read_manifest

    folder = Path(str(run_config["data-dir"]))
    entry = read_manifest(folder)[int(node_config["partition-id"])]
    return {"data-path": entry.file, "client-id": entry.client_id, "client-index": entry.client_index,
            "state-dir": str(folder / "state" / f"node-{node_config['partition-id']}"),
            "identity-key": entry.identity, "enrolment": str(folder / ENROLMENT), **node_config}


def _first_row(path: Path) -> dict:
    with path.open() as fh:
        for line in fh:
            if line.strip():
                return json.loads(line)
    raise DataError(f"{path} holds no rows")


__all__ = ["CONFIG_KEY", "ClientNode", "config_from_run"]
