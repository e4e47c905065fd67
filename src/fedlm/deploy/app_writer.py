"""Write a ready Flower app directory for an experiment (``fedlm deploy app``).

The app is a ``pyproject.toml`` whose ``[tool.flwr.app.components]`` name fedlm's own
ServerApp and ClientApp (so the app ships no code of its own: every machine runs the
installed ``fedlm[flower]``) and whose ``[tool.flwr.app.config]`` (the run config)
holds the resolved experiment as YAML plus the server's options; ``flwr run`` builds it
into a FAB and submits it to a SuperLink. ``fedlm_app.txt`` says how to run it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from fedlm.config.loader import dump_config
from fedlm.config.schema import ExperimentConfig
from fedlm.deploy.client_node import CONFIG_KEY
from fedlm.errors import ConfigError

SERVER_APP = "fedlm.deploy.server_app:app"
CLIENT_APP = "fedlm.deploy.client_app:app"
CLIENT_NODES = "client-nodes"  # run config: JSON {client id: Flower node id} the server binds


def run_config(config: ExperimentConfig, *, out_dir: str = "", nodes: int = 0, resume: bool = False,
               data_dir: str = "", client_nodes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The run config keys the ServerApp and ClientApp read.

    ``client_nodes``: each client id's Flower node id (what ``flwr supernode register``
    printed for the client's node key); the server refuses any other node claiming it.
    """
    return {CONFIG_KEY: dump_config(config), "out-dir": out_dir, "nodes": nodes, "resume": resume,
            "data-dir": data_dir, CLIENT_NODES: json.dumps(dict(client_nodes or {}), sort_keys=True)}


def pinned_nodes(run_config: Mapping[str, Any]) -> dict[str, int] | None:
    """The run config's client id -> node id enrolment, or None when it has none."""
    text = run_config.get(CLIENT_NODES) or ""
    try:
        pinned = json.loads(text) if text else {}
        ok = isinstance(pinned, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in pinned.items())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"run config {CLIENT_NODES!r} must be a JSON object of client id -> node id, got {str(text)[:80]!r}")
    return pinned or None


def write_app(config: ExperimentConfig, folder: Path, **options: Any) -> Path:
    """Write ``folder/pyproject.toml`` (and a short README); returns ``folder``."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": f"fedlm-{config.name}".lower().replace("_", "-"),
            "version": "1.0.0",
            "description": f"fedlm experiment {config.name!r} as a Flower app",
            "license": "Apache-2.0",
            "dependencies": [f"fedlm[flower]=={version('fedlm')}"],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedlm",
            "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
            "config": run_config(config, **options),
        }}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project, multiline_strings=True), encoding="utf-8")
    (folder / "fedlm_app.txt").write_text(
        "fedlm Flower app. Every machine needs `pip install 'fedlm[flower]'`.\n"
        "Deployment: flwr run . <superlink-connection> --stream  (see docs/deployment.md)\n"
        "Flower simulation: flwr run . <simulation-connection> --stream\n",
        encoding="utf-8",
    )
    return folder


__all__ = ["CLIENT_APP", "CLIENT_NODES", "SERVER_APP", "pinned_nodes", "run_config", "write_app"]
