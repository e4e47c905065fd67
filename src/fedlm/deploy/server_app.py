"""fedlm's Flower ServerApp: :func:`~fedlm.deploy.federation.run_federation`.

Run config keys: ``fedlm-config`` (the experiment as YAML), ``out-dir`` (the run
directory on the SuperLink's machine; empty: ``output.dir`` or ``runs/NAME-TIME``),
``resume`` (continue from the run directory's last checkpoint), ``nodes`` (clients
to wait for before round 1; 0: ``deploy.min_nodes`` or 1) and ``client-nodes`` (JSON:
client id -> the Flower node id it is enrolled under; empty: the first node to claim an id).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlm.deploy.federation import run_federation
from fedlm.deploy.messaging import Courier

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedlm.deploy.app_writer import pinned_nodes
    from fedlm.deploy.client_node import config_from_run

    config = config_from_run(context.run_config)
    courier = Courier(grid, config.deploy, pinned=pinned_nodes(context.run_config))
    run_dir = run_federation(courier, dict(context.run_config))
    print(f"fedlm: run directory {run_dir.resolve()}", flush=True)
