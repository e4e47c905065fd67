"""The app of ``fedlm deploy app`` in Flower's simulation engine (Ray), on this machine.

:class:`FlowerSimulation` starts ``flower-superlink --simulation`` (loopback, no TLS:
nothing leaves the machine), points a ``flwr`` connection at it with
``num-supernodes`` virtual SuperNodes (``flwr run --federation-config``), writes the app with its data split into
one file per client (each virtual node finds its file from its ``partition-id``) and
runs it with ``flwr run``. It is the documented path for federations too large for
fedlm's in-process simulator, and the comparison point of ``benchmarks/engines.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tomli_w

from fedlm.deploy.app_writer import write_app
from fedlm.deploy.local_data import write_client_files
from fedlm.deploy.processes import HOST, Proc, Processes, flwr_bin, free_port

CONNECTION = "fedlm-simulation"


@dataclass
class FlowerSimulation(Processes):
    """Flower's simulation engine with one virtual SuperNode per client (a context manager).

    Args:
        cpus_per_client: Ray CPUs per virtual ClientApp (how many run at once).
    """

    cpus_per_client: int = 1
    nodes: int = 0
    port: int = 0

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        clients = write_client_files(self.config, self.work / "data")
        self.nodes = len(clients)
        self.port = free_port()
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        conn = {"address": f"{HOST}:{self.port}", "insecure": True}
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
        self.spawn("superlink", [
            flwr_bin("flower-superlink"), "--insecure", "--simulation", "--host", HOST, "--port", str(self.port),
            "--database", str(self.work / "superlink.db"), "--disable-runtime-dependency-installation",
        ])
        self.wait_for_port(self.port, proc=self.procs["superlink"])

    def submit(self) -> Proc:
        app = write_app(self.config, self.work / "app", out_dir=str(self.run_dir.resolve()), nodes=self.nodes,
                        data_dir=str((self.work / "data").resolve()))
        federation = f"num-supernodes={self.nodes} client-resources-num-cpus={self.cpus_per_client}"
        return self.spawn("run", [flwr_bin("flwr"), "run", str(app), CONNECTION, "--stream",
                                  "--federation-config", federation])

    def run(self) -> dict:
        return self.wait(self.submit())


__all__ = ["CONNECTION", "FlowerSimulation"]
