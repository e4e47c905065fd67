"""The long-lived ClientApp process runs fedlm's ClientApp only, whatever a run's app names."""

from __future__ import annotations

import io
import zipfile

import pytest
import tomli_w

pytest.importorskip("flwr")

from fedlm.deploy.app_writer import CLIENT_APP, write_app
from fedlm.deploy.worker import foreign_app, main


def _fab(clientapp: str) -> bytes:
    project = {"project": {"name": "x", "version": "1.0.0"},
               "tool": {"flwr": {"app": {"publisher": "p", "components": {"serverapp": "a:b", "clientapp": clientapp}}}}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", tomli_w.dumps(project))
    return buf.getvalue()


def test_only_fedlms_own_clientapp_is_run(tmp_path, tiny_config):
    folder = write_app(tiny_config, tmp_path / "app")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(folder / "pyproject.toml", "pyproject.toml")
    assert foreign_app(buf.getvalue()) is None  # what `fedlm deploy app` writes
    assert "runs only " + CLIENT_APP in foreign_app(_fab("evil.module:app"))  # code a FAB would bring: refused
    assert "unreadable app bundle" in foreign_app(b"not a zip")


def test_the_worker_needs_one_node_or_a_nodes_file(tmp_path):
    with pytest.raises(SystemExit, match="--runtime-api-address or --nodes-file"):
        main([])
    with pytest.raises(SystemExit, match="one of them"):
        main(["--runtime-api-address", "127.0.0.1:1", "--nodes-file", str(tmp_path / "n.json")])


def test_a_nodes_file_is_reread_when_it_changes(tmp_path):
    import json
    import os

    from fedlm.deploy.worker import nodes_file

    secret = tmp_path / "s"
    secret.write_bytes(b"k" * 32)
    path = tmp_path / "nodes.json"
    read = nodes_file(path)
    assert read() == {}  # not written yet: nothing to serve
    path.write_text(json.dumps({"127.0.0.1:1": str(secret), "127.0.0.1:2": None}))
    assert read() == {"127.0.0.1:1": b"k" * 32, "127.0.0.1:2": None}
    path.write_text("{half")  # being rewritten: the last good list stays
    os.utime(path, ns=(1, 1))
    assert read() == {"127.0.0.1:1": b"k" * 32, "127.0.0.1:2": None}
    path.write_text(json.dumps({"127.0.0.1:3": None}))  # a restarted node's new address
    assert read() == {"127.0.0.1:3": None}
