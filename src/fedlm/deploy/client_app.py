"""fedlm's Flower ClientApp: every message is handled by a fresh :class:`ClientNode`.

Flower runs it in a new process per message (``--isolation subprocess``), in Ray actors
(its simulation engine) or, with ``--isolation process``, in fedlm's long-lived worker
(:mod:`.worker`); the last two keep the config, examples and model warm between messages.

Message types (``query.*`` for the protocol steps, ``train``/``evaluate`` for the work):
``query.fedlm_register`` (client id and data sizes), ``query.secagg_keys``,
``query.secagg_share``, ``query.secagg_consistency``, ``query.secagg_unmask`` (SecAgg+ phases), ``train`` (one round:
local training, client stages, masking) and ``evaluate`` (held-out loss of the global
state). A handler that raises makes Flower send an error reply, which the server counts
as that client dropping out of the round.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlm.deploy.client_node import ClientNode
from fedlm.deploy.messaging import RECORD, fields_of
from fedlm.deploy.secagg_remote import CONSISTENCY, KEYS, SHARE, UNMASK

app = ClientApp()


def _reply(msg: Message, fields: dict[str, bytes]) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(fields)}), reply_to=msg)


def _node(context: Context) -> ClientNode:
    return ClientNode(context.run_config, context.node_config)


@app.query("fedlm_register")
def register(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).register())


@app.query("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).secagg_step(KEYS, fields_of(msg)))


@app.query("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).secagg_step(SHARE, fields_of(msg)))


@app.query("secagg_consistency")
def secagg_consistency(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).secagg_step(CONSISTENCY, fields_of(msg)))


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).secagg_step(UNMASK, fields_of(msg)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).train(fields_of(msg)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, _node(context).evaluate(fields_of(msg)))
