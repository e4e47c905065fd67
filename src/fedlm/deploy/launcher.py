"""``fedlm deploy local``: a real federation on loopback, with TLS and node authentication.

:class:`LocalFederation` starts, as separate processes, one ``flower-superlink`` (TLS with
a per-run CA, SuperNode authentication on) and one ``flower-supernode`` per client (each
with its own authentication key, allow-listed with ``flwr supernode register``, and its
own data file and state directory), writes the Flower app, submits it with ``flwr run``
and waits for the run directory's ``summary.json``. Every process is stopped when the
federation is closed, on success, error or Ctrl-C (:mod:`.processes`). Everything it
writes (credentials, Flower's home, logs, node data) lives in its work directory.

Each launch starts a fresh SuperLink (new credentials, an empty database). A resumed
launch (``resume=True``) keeps the SuperNodes' state directories, where each client
keeps its own state by round, so a run continued from the server's last checkpoint goes
on with the same client state the simulator would have; a new launch clears them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedlm.deploy.app_writer import write_app
from fedlm.deploy.credentials import NodeKey, TlsFiles, write_node_key, write_tls
from fedlm.deploy.local_data import ENROLMENT, ClientFile, write_client_files
from fedlm.deploy.processes import HOST, Proc, Processes, flwr_bin, free_port
from fedlm.errors import FedlmError

CONNECTION = "fedlm-local"


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
    """

    nodes: int = 1
    start_nodes: bool = True
    resume: bool = False
    port: int = 0
    tls: TlsFiles | None = None
    keys: list[NodeKey] = field(default_factory=list)
    clients: list[ClientFile] = field(default_factory=list)

    def start(self) -> None:
        """Credentials, the SuperLink, the allow-list and one SuperNode per client."""
        self.work.mkdir(parents=True, exist_ok=True)
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
        for key in self.keys:
            self.flwr("supernode", "register", str(key.public), CONNECTION)
        for i, client in enumerate(self.clients if self.start_nodes else []):
            self.start_node(i, client)

    def start_node(self, i: int, client: ClientFile, *, key: NodeKey | None = None, auth: bool = True,
                   name: str | None = None) -> Proc:
        """(Re)start SuperNode ``i`` for ``client`` with ``key`` (None: its allow-listed one; ``auth=False``: none)."""
        state = self.work / "nodes" / f"node-{i}"
        node_config = (f'data-path="{client.file}" client-id="{client.client_id}" '
                       f'client-index={client.client_index} state-dir="{state}" '
                       f'identity-key="{client.identity}" enrolment="{Path(client.file).parent / ENROLMENT}"')
        argv = [flwr_bin("flower-supernode"), "--superlink", f"{HOST}:{self.port}", "--root-certificates",
                str(self.tls.ca), "--node-config", node_config, "--port", str(free_port()), "--max-retries", "3"]
        if auth:
            argv += ["--auth-supernode-private-key", str((key or self.keys[i]).private)]
        return self.spawn(name or f"node-{i}", argv)

    def submit(self) -> Proc:
        """Write the app and start ``flwr run`` (streaming the run's log to ``logs/run.log``)."""
        app = write_app(self.config, self.work / "app", out_dir=str(self.run_dir.resolve()), nodes=self.nodes,
                        resume=self.resume)
        return self.spawn("run", [flwr_bin("flwr"), "run", str(app), CONNECTION, "--stream"])

    def run(self) -> dict:
        """Submit the app and wait for it; returns ``summary.json``."""
        return self.wait(self.submit())


__all__ = ["CONNECTION", "LocalFederation", "free_port"]
