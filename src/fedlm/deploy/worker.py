"""A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

Flower 1.42's SuperNode runs each message's ClientApp in a new process by default
(``--isolation subprocess``: the ``flower-superexec`` it starts launches one
``flwr-clientapp`` per message), so every message pays for starting Python, importing
torch, transformers and peft, and loading the model: tens of seconds a message on a
loaded machine, five messages a SecAgg+ round. With ``--isolation process`` the SuperNode
only queues each message as a task on its Runtime API (``--host``/``--port``, loopback),
and the process that holds that address runs it. :func:`serve` is that process for fedlm:
it acquires one ClientApp task at a time (``AcquireTask``), pulls its message and
context, runs fedlm's ClientApp in process, pushes the reply and the task's status, and
waits for the next one, keeping the imports, the model and the prepared examples warm
(:mod:`.client_node`, :mod:`.model_cache`).

It runs only fedlm's own ClientApp (``fedlm.deploy.client_app:app``): a run whose app
names another ClientApp is answered with an error, and no code from a FAB is installed
or imported. ``secret`` (the SuperNode's ``--superexec-auth-secret-file``) keeps other
local processes from acquiring the node's tasks. The process exits when ``parent_pid``
(its SuperNode, or the launcher) is gone. One worker may serve several SuperNodes of one
machine (``nodes_file``): ``fedlm deploy local`` runs one for all its nodes, so the model
stack is imported once, not once per node. Flower's own Runtime API client is used (flwr
is pinned to 1.42.x).

``fedlm deploy worker --runtime-api-address 127.0.0.1:9094`` runs it beside a SuperNode.
Importing this module imports nothing heavy (the CLI builds its parser from it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("fedlm.deploy.worker")

POLL_S = 0.2  # between AcquireTask calls while idle (the SuperNode itself pulls every 3 s)
HEARTBEAT_S = 10.0  # task heartbeats while a message is handled (Flower expects one per ~30 s)


Nodes = dict[str, "bytes | None"]  # Runtime API address -> its SuperExec secret (None: none)


def serve(nodes: Nodes | Callable[[], Nodes], *, parent_pid: int | None = None, poll_s: float = POLL_S,
          max_tasks: int | None = None) -> int:
    """Acquire and run the ClientApp tasks of ``nodes`` until ``parent_pid`` is gone; returns tasks run.

    ``nodes`` may be a function, called at every pass, so SuperNodes can come and go (a
    restarted node's new address replaces its old one). A node that does not answer is
    skipped until it does. Tasks run one at a time, in the order they are acquired.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    import fedlm.deploy.client_app  # noqa: F401  (what every message needs: flwr, torch, the wire)

    threading.Thread(target=_warm_up, daemon=True).start()  # transformers and peft, while it serves
    executors: dict[tuple[str, bytes | None], Any] = {}
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    done = 0
    while max_tasks is None or done < max_tasks:
        if parent_pid is not None and not _alive(parent_pid):
            log.info("the process it serves for (pid %s) is gone; stopping", parent_pid)
            break
        idle = True
        for address, secret in (nodes() if callable(nodes) else nodes).items():
            if (address, secret) not in executors:
                executors[(address, secret)] = _client(address, interceptors=_auth(secret), tries=1)
            try:
                res = executors[(address, secret)].AcquireTask(request)
            except Exception as exc:  # that SuperNode is starting, restarting or gone
                log.debug("AcquireTask at %s failed (%s)", address, exc)
                continue
            if res.HasField("task") and res.token:
                try:
                    run_task(address, res.token)
                except Exception:  # one task's failure is that message's, never the worker's end
                    log.exception("a task from %s failed", address)
                done, idle = done + 1, False
        if idle:
            time.sleep(poll_s)
    return done


def nodes_file(path: Path) -> Callable[[], Nodes]:
    """The nodes listed in ``path`` (JSON: address -> secret file or null), re-read when it changes."""
    seen: dict[str, Any] = {"mtime": None, "nodes": {}}

    def read() -> Nodes:
        try:
            mtime = path.stat().st_mtime_ns
            if mtime != seen["mtime"]:
                listed = json.loads(path.read_text())
                seen["nodes"] = {str(a): (Path(f).read_bytes() if f else None) for a, f in dict(listed).items()}
                seen["mtime"] = mtime
        except (OSError, ValueError, TypeError) as exc:  # being replaced: keep the last good list
            log.debug("cannot read %s (%s)", path, exc)
        return seen["nodes"]

    return read


_WARM = threading.Event()  # set once the model stack is imported


def _warm_up() -> None:
    """Import the model stack in the background: a SecAgg+ key phase needs none of it, so a
    restarted node answers its first messages without waiting for transformers and peft."""
    try:
        import fedlm.deploy.model_cache
        import fedlm.deploy.parts  # noqa: F401
    finally:
        _WARM.set()


def run_task(address: str, token: str) -> None:
    """Pull one task's message, run fedlm's ClientApp on it, push the reply and the status."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from fedlm.deploy.client_app import app

    client = _client(address, interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                            RuntimeTokenHttpInterceptor(token)])
    stop = threading.Event()
    threading.Thread(target=_heartbeats, args=(client, stop), daemon=True).start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "fedlm worker: task failed"
    t0 = time.perf_counter()
    t_app = 0.0
    try:
        message, context, fab = _pull_task_input(client)
        why = foreign_app(fab.content)
        if why is not None:
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=why), reply_to=message)
            details = why
        else:
            if not message.metadata.message_type.startswith("query.secagg"):
                t1 = time.perf_counter()
                _WARM.wait()  # one importer at a time: no import-lock race with the warm-up thread
                t0 += time.perf_counter() - t1  # the import is the worker's start-up, not this message's
            t1 = time.perf_counter()
            reply = app(message=message, context=context)
            t_app = time.perf_counter() - t1
            status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # the app's own failure: an error reply, as flwr-clientapp sends
        log.exception("the ClientApp raised")
        details = f"{type(exc)}:<'{exc}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        except Exception:  # the SuperNode went away; the task expires there
            log.exception("could not push the reply")
        stop.set()
        client.close()
    kind = message.metadata.message_type if message is not None else "?"
    log.info("%s: %.3f s in fedlm's ClientApp, %.3f s with Flower's pull and push (%s)", kind, t_app,
             time.perf_counter() - t0, status)


def foreign_app(fab_content: bytes) -> str | None:
    """Why this worker refuses a run's app (it names another ClientApp), or None."""
    from flwr.common.config import get_fab_config

    from fedlm.deploy.app_writer import CLIENT_APP

    try:
        components = get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]
        named = components.get("clientapp")
    except Exception as exc:
        return f"fedlm worker: unreadable app bundle ({type(exc).__name__})"
    if named != CLIENT_APP:
        return f"fedlm worker runs only {CLIENT_APP}; this run's app names {str(named)[:80]!r}"
    return None


def _client(address: str, *, interceptors: list, tries: int = 20):
    """A Runtime API client that retries transport errors and 502-504 quickly and gives up on the rest.

    Flower's own retry policy answers a 401 (say, an expired task token) by sending the
    process SIGINT: fine for a process per message, fatal for this one.
    """
    import httpx
    from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
    from flwr.supercore.runtime import RuntimeHttpClient

    def giveup(exc: Exception) -> bool:
        return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in (502, 503, 504)

    retry = RetryInvoker(lambda: exponential(base_delay=0.05, max_delay=2), (httpx.TransportError, httpx.HTTPStatusError),
                         max_tries=tries, max_time=60.0, should_giveup=giveup)
    return RuntimeHttpClient.from_server_address(address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors, retry_invoker=retry)


def _pull_task_input(client):
    """The task's message, context and app bundle (Flower's ``pull_task_input``, polling faster).

    The SuperNode offers a task before it holds all of the message's objects; Flower waits
    1 s (doubling) for a missing one, a process start's worth. Here the first wait is 50 ms.
    """
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context = context_from_proto(res.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode's Runtime API sent no message for this task")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.05, backoff_cap=1.0)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
    return message, context, fab_from_proto(res.fab)


def _auth(secret: bytes | None) -> list:
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )

    out = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:
        out.append(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                protected_methods=("/flwr.proto.Runtime/AcquireTask",)))
    return out


def _heartbeats(client, stop: threading.Event) -> None:
    """Task heartbeats until ``stop``; a failed one is retried at the next beat (never a signal)."""
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    while not stop.wait(HEARTBEAT_S):
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except Exception as exc:
            log.debug("task heartbeat failed (%s)", exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedlm deploy worker", description=__doc__.split("\n\n")[0])
    add_worker_args(p)
    args = p.parse_args(argv)
    return run_worker(args)


def add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-api-address",
                   help="the SuperNode's Runtime API, HOST:PORT (its --host/--port; start it with --isolation process)")
    p.add_argument("--superexec-auth-secret-file", help="the secret file the SuperNode was given, if any")
    p.add_argument("--nodes-file", help="serve several SuperNodes on this machine: a JSON file of address -> "
                                        "secret file, re-read while it runs (what fedlm deploy local writes)")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode, or the launcher) is gone")


def run_worker(args: argparse.Namespace) -> int:
    if bool(args.runtime_api_address) == bool(args.nodes_file):
        raise SystemExit("fedlm deploy worker: give --runtime-api-address or --nodes-file (one of them)")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call otherwise
    if args.nodes_file:
        nodes: Nodes | Callable[[], Nodes] = nodes_file(Path(args.nodes_file))
    else:
        secret = Path(args.superexec_auth_secret_file).read_bytes() if args.superexec_auth_secret_file else None
        nodes = {args.runtime_api_address: secret}
    serve(nodes, parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Nodes", "add_worker_args", "foreign_app", "main", "nodes_file", "run_task", "run_worker", "serve"]
