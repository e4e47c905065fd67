"""``fedlm deploy local``: a real federation on loopback, with TLS and node authentication.

:class:`LocalFederation` starts, as separate processes, one ``flower-superlink`` (TLS with
a per-run CA, SuperNode authentication on) and one ``flower-supernode`` per client (each
with its own authentication key, allow-listed with ``flwr supernode register``, and its
own data file and state directory), writes the Flower app, submits it with ``flwr run``
and waits for the run directory's ``summary.json``. Every process is stopped when the
federation is closed, on success, error, Ctrl-C or SIGTERM, and when the launching
process dies (:mod:`.processes`). Everything it writes (credentials, Flower's home, logs,
node data) lives in its work directory.

Each node's client id is pinned to the node id ``flwr supernode register`` gave its key
(run config ``client-nodes``), so the server refuses any other node that claims it. With
``isolation="process"`` (the default) each SuperNode runs ``--isolation process`` and one
long-lived fedlm worker (:mod:`.worker`) handles the messages of all of them with the
model kept in memory, authenticated to each SuperNode's Runtime API by a per-node secret
(the nodes share this machine; across machines each organisation runs its own worker);
``isolation="subprocess"`` is Flower's default, a new ClientApp process per message.

Each launch starts a fresh SuperLink (new credentials, an empty database). A resumed
launch (``resume=True``) keeps the SuperNodes' state directories, where each client
keeps its own state by round, so a run continued from the server's last checkpoint goes
on with the same client state the simulator would have; a new launch clears them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedlm.deploy.app_writer import write_app
from fedlm.deploy.credentials import NodeKey, TlsFiles, write_node_key, write_tls
from fedlm.deploy.local_data import ENROLMENT, ClientFile, write_client_files
from fedlm.deploy.processes import HOST, Proc, Processes, flwr_bin, free_port
from fedlm.errors import ConfigError, FedlmError
from fedlm.privacy.secagg.state import write_private

CONNECTION = "fedlm-local"
ISOLATION = ("process", "subprocess")
WORKER_NODES = "worker-nodes.json"  # the SuperNodes the worker serves


@dataclass
class LocalFederation(Processes):
    """A SuperLink and one SuperNode per client on loopback (use as a context manager).

    Args:
        config: the experiment.
        work: work directory (credentials, logs, node data and state, Flower's home).
        run_dir: the run directory the ServerApp writes.
        nodes: SuperNodes to start; must equal the number of clients in ``config.data``.
        start_nodes: start them with the SuperLink (False: only credentials and SuperLink).
        resume: continue the run in ``run_dir`` from its last checkpoint, keeping the nodes' state.
        isolation: ``"process"``: one long-lived fedlm worker per SuperNode; ``"subprocess"``:
            Flower's default, a ClientApp process per message.
    """

    nodes: int = 1
    start_nodes: bool = True
    resume: bool = False
    isolation: str = "process"
    port: int = 0
    tls: TlsFiles | None = None
    keys: list[NodeKey] = field(default_factory=list)
    clients: list[ClientFile] = field(default_factory=list)
    node_ids: dict[str, int] = field(default_factory=dict)  # client id -> its node key's node id
    runtimes: dict[str, tuple[str, str]] = field(default_factory=dict)  # node name -> Runtime API, secret file

    def start(self) -> None:
        """Credentials, the SuperLink, the allow-list and one SuperNode per client."""
        if self.isolation not in ISOLATION:
            raise ConfigError(f"isolation={self.isolation!r}; use one of {ISOLATION}")
        self.work.mkdir(parents=True, exist_ok=True)
        if self.start_nodes:  # first: its imports overlap the SuperLink's start and the keys
            self._ensure_worker()
        if not self.resume:  # a new run: no client state from an earlier launch in this work directory
            shutil.rmtree(self.work / "nodes", ignore_errors=True)
        for db in self.work.glob("superlink.db*"):  # a fresh SuperLink: this launch's keys only
            db.unlink()
        self.clients = write_client_files(self.config, self.work / "data")
        if len(self.clients) != self.nodes:
            raise FedlmError(
                f"config.data gives {len(self.clients)} clients but --nodes is {self.nodes}; each SuperNode holds "
                f"one client, so pass --nodes {len(self.clients)} (or change data.num_clients / data.max_clients)"
            )
        self.tls = write_tls(self.work / "tls")
        self.keys = [write_node_key(self.work / "keys", f"node-{i}") for i in range(self.nodes)]
        self.port = free_port()
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        conn = {"address": f"{HOST}:{self.port}", "root-certificates": str(self.tls.ca)}
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
        self.spawn("superlink", [
            flwr_bin("flower-superlink"), "--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
            "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth", "--host", HOST, "--port", str(self.port),
            "--database", str(self.work / "superlink.db"), "--disable-runtime-dependency-installation",
        ])
        self.wait_for_port(self.port, proc=self.procs["superlink"])
        self.node_ids = {client.client_id: _node_id(self.flwr_here("supernode", "register", str(key.public),
                                                                   CONNECTION, "--format", "json"))
                         for client, key in zip(self.clients, self.keys)}
        for i, client in enumerate(self.clients if self.start_nodes else []):
            self.start_node(i, client)

    def start_node(self, i: int, client: ClientFile, *, key: NodeKey | None = None, auth: bool = True,
                   name: str | None = None) -> Proc:
        """(Re)start SuperNode ``i`` for ``client`` with ``key`` (None: its allow-listed one; ``auth=False``: none)."""
        state = self.work / "nodes" / f"node-{i}"
        node_config = (f'data-path="{client.file}" client-id="{client.client_id}" '
                       f'client-index={client.client_index} state-dir="{state}" '
                       f'identity-key="{client.identity}" enrolment="{Path(client.file).parent / ENROLMENT}"')
        runtime = f"{HOST}:{free_port()}"  # the SuperNode's Runtime API, where its ClientApp runs from
        argv = [flwr_bin("flower-supernode"), "--superlink", f"{HOST}:{self.port}", "--root-certificates",
                str(self.tls.ca), "--node-config", node_config, "--host", HOST, "--port", runtime.rsplit(":", 1)[1],
                "--max-retries", "3", "--isolation", self.isolation]
        if auth:
            argv += ["--auth-supernode-private-key", str((key or self.keys[i]).private)]
        name = name or f"node-{i}"
        self._ensure_worker()
        if self.isolation == "process":  # only the worker, which holds the secret, may take its tasks
            secret = self.work / "keys" / f"{name}.runtime-secret"
            write_private(secret, secrets.token_bytes(32))
            argv += ["--superexec-auth-secret-file", str(secret)]
            self.runtimes[name] = (runtime, str(secret))
            self._write_runtimes()
        return self.spawn(name, argv)

    def restart_node(self, i: int, *, wait_s: float = 180.0) -> Proc:
        """Start SuperNode ``i`` again after it died, as its organisation would.

        The SuperLink refuses to activate a node id it still counts as online (until two
        of its 30 s heartbeats are missed), so the node is started again until one is let in.

        Raises:
            FedlmError: none was let in within ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            log = self.work / "logs" / f"node-{i}.log"
            offset = log.stat().st_size if log.is_file() else 0
            proc = self.start_node(i, self.clients[i])
            while proc.alive() and b"SuperNode ID" not in _read_from(log, offset):
                time.sleep(0.2)
            if proc.alive():
                return proc
            time.sleep(2.0)  # refused: the old session has not expired yet
        raise FedlmError(f"SuperNode {i} was not let back in within {wait_s:g} s; see {log}")

    def _ensure_worker(self) -> None:
        """The one fedlm worker that serves this machine's SuperNodes (``isolation="process"``)."""
        if self.isolation != "process" or "worker" in self.procs:
            return
        self._write_runtimes()
        self.spawn("worker", [sys.executable, "-m", "fedlm.deploy.worker", "--nodes-file",
                              str(self.work / WORKER_NODES), "--parent-pid", str(os.getpid())])

    def _write_runtimes(self) -> None:
        """The worker's list of SuperNodes to serve (a restarted node replaces its old address)."""
        listed = {address: secret for address, secret in self.runtimes.values()}
        write_private(self.work / WORKER_NODES, json.dumps(listed, sort_keys=True).encode())

    def submit(self) -> Proc:
        """Write the app and start ``flwr run`` (streaming the run's log to ``logs/run.log``)."""
        app = write_app(self.config, self.work / "app", out_dir=str(self.run_dir.resolve()), nodes=self.nodes,
                        resume=self.resume, client_nodes=self.node_ids)
        return self.spawn("run", [flwr_bin("flwr"), "run", str(app), CONNECTION, "--stream"])

    def run(self) -> dict:
        """Submit the app and wait for it; returns ``summary.json``."""
        return self.wait(self.submit())


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


def _node_id(out: str) -> int:
    """The node id in ``flwr supernode register --format json``'s output."""
    found = re.search(r'"node-id"\s*:\s*(\d+)', out) or re.search(r"SuperNode (\d+) registered", out)
    if found is None:
        raise FedlmError(f"`flwr supernode register` printed no node id: {out[-400:]}")
    return int(found.group(1))


__all__ = ["CONNECTION", "ISOLATION", "LocalFederation", "free_port"]
