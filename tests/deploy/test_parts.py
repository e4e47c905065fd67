"""Fast checks of the deployment's pieces: wire codecs, credentials, app, config, data."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")

from deploy_support import deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.aggregation.scaffold_stage import ScaffoldRound
from fedlm.config.deploy import DeployConfig
from fedlm.config.loader import dump_config
from fedlm.deploy import wire
from fedlm.deploy.app_writer import CLIENT_APP, SERVER_APP, write_app
from fedlm.deploy.client_node import ClientNode, config_from_run
from fedlm.deploy.credentials import write_node_key, write_tls
from fedlm.deploy.local_data import read_manifest, write_client_files
from fedlm.deploy.parts import check_deployable, placeholder_data
from fedlm.engine.simulation import ClientOutcome
from fedlm.errors import ConfigError, FedlmError
from fedlm.privacy.secagg.stages import SecAggRound
from fedlm.privacy.stages import DpRound
from fedlm.stages import ClientUpdate, RoundPlan


def test_timeout_grows_with_payload_and_training():
    d = DeployConfig(floor_s=10, seconds_per_mb=3, train_s=100)
    assert d.timeout(0) == 10
    assert d.timeout(2_000_000) == pytest.approx(16)  # 10 s + 2 MB * 3 s/MB
    assert d.timeout(2_000_000, trains=True) == pytest.approx(116)
    with pytest.raises(ValueError, match="floor_s"):
        DeployConfig(floor_s=0)


def test_plan_and_outcome_survive_the_wire():
    plan = RoundPlan(round=2, cohort=("a", "b"), lr=0.01, local_steps=3, seed=7).with_fields(
        DpRound(clip_norm=1.5, expected_cohort_size=2.0), ScaffoldRound({"c": torch.ones(2)}), SecAggRound(object()))
    kinds = {k.__name__: k for k in (DpRound, ScaffoldRound, SecAggRound)}
    back = wire.plan_from_fields(wire.plan_to_fields(plan), kinds)
    assert back.cohort == ("a", "b") and back.seed == 7 and back.get(DpRound).clip_norm == 1.5
    assert back.get(SecAggRound) is None and torch.equal(back.get(ScaffoldRound).c["c"], torch.ones(2))
    with pytest.raises(FedlmError, match="does not expect"):  # a field this client's capabilities lack
        wire.plan_from_fields(wire.plan_to_fields(plan), {"DpRound": DpRound})
    update = ClientUpdate("a", 2, 5, tensors={"w": torch.arange(3.0)}, payload=b"xy", metrics={"local_steps": 3})
    sent = ClientOutcome("a", update=update, metrics={"train_loss": 1.25}, train_seconds=0.5)
    got = wire.outcome_from_fields(wire.outcome_to_fields(sent), expect="a")
    assert got.update.payload == b"xy" and torch.equal(got.update.tensors["w"], torch.arange(3.0))
    assert got.update.num_examples == 5 and got.metrics == {"train_loss": 1.25} and got.state is None
    with pytest.raises(Exception, match="instead of 'b'"):
        wire.outcome_from_fields(wire.outcome_to_fields(sent), expect="b")


def test_credentials_chain_and_node_key(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    tls = write_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert (tls.key.stat().st_mode & 0o777) == 0o600
    key = write_node_key(tmp_path / "keys", "node")
    private = load_ssh_private_key(key.private.read_bytes(), None)
    assert private.curve.name == "secp384r1"
    assert load_ssh_public_key(key.public.read_bytes()).public_numbers() == private.public_key().public_numbers()


def test_app_is_a_valid_flower_app(tmp_path, tiny_config):
    import tomllib
    from flwr.common.config import validate_config

    folder = write_app(tiny_config, tmp_path / "app", out_dir="/runs/x", nodes=3)
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(project, check_module=True, project_dir=folder)
    assert ok, errors
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    assert app["config"]["nodes"] == 3 and app["config"]["out-dir"] == "/runs/x"
    assert validate_config_text(app["config"]["fedlm-config"]) == tiny_config


def validate_config_text(text: str):
    return config_from_run({"fedlm-config": text})


def test_features_needing_server_side_data_are_refused(tiny_config):
    check_deployable(tiny_config)
    bad = tiny_config.model_copy(update={"audit": tiny_config.audit.model_copy(update={"enabled": True})})
    with pytest.raises(ConfigError, match=r"audit\.enabled"):
        check_deployable(bad)


def test_placeholders_keep_sizes_but_no_examples():
    data = placeholder_data({"b": {"train": 3, "heldout": 1}, "a": {"train": 2, "heldout": 1}}, "lm")
    assert data.ids() == ["a", "b"] and len(data.clients["b"].train) == 3
    assert data.clients["a"].train == [None, None] and data.summary()["train_examples"] == 5


def test_a_node_formats_its_file_as_the_simulator(tmp_path):
    from fedlm.commands.experiment import prepare

    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data))
    files = write_client_files(config, tmp_path / "split")
    assert [f.client_id for f in read_manifest(tmp_path / "split")] == [f.client_id for f in files]
    _, sim_data = prepare(config)
    rc = {"fedlm-config": dump_config(config)}
    for f in files:
        node = ClientNode(rc, {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
                               "state-dir": str(tmp_path / "state" / f.client_id)})
        mine, theirs = node.data(), sim_data.clients[f.client_id]
        assert mine.train == theirs.train and mine.heldout == theirs.heldout
        assert json.loads(node.register()["meta"])["train"] == len(theirs.train)


def test_cli_writes_the_app_and_its_data(tmp_path, lm_data):
    import tomllib

    from fedlm.cli.main import main
    from fedlm.deploy.app_writer import pinned_nodes

    overrides = [x for o in deploy_overrides(lm_data) for x in ("--set", o)]
    assert main(["deploy", "app", "--out", str(tmp_path / "app"), "--with-data", "--client-node", "alpha=11",
                 "--client-node", "beta=12", *overrides]) == 0
    assert (tmp_path / "app" / "pyproject.toml").is_file()
    assert len(read_manifest(tmp_path / "app" / "data")) == 4  # lm_data holds 4 clients
    app = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert pinned_nodes(app["config"]) == {"alpha": 11, "beta": 12}  # the node enrolment the server binds
    assert main(["deploy", "app", "--out", str(tmp_path / "app2"), "--client-node", "alpha", *overrides]) == 2
