"""The app ``fedlm deploy app`` writes runs under ``flwr run`` in Flower's simulation engine."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")
pytest.importorskip("ray")

from deploy_support import assert_same_records, deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.deploy.simulation_engine import FlowerSimulation


@pytest.mark.slow
@pytest.mark.deploy
def test_the_app_runs_in_flowers_simulation_engine(tmp_path):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data, **{"federation.rounds": 1, "deploy.floor_s": 120}))
    with FlowerSimulation(config, tmp_path / "work", tmp_path / "flower") as sim:
        summary = sim.run()
    assert summary["rounds_completed"] == 1 and summary["secure_aggregation"]["survivors"] == 3
    want = run_experiment(config, out_dir=tmp_path / "sim").run_dir
    a = load_file(next((want / "adapter").glob("*.safetensors")))
    b = load_file(next((tmp_path / "flower" / "adapter").glob("*.safetensors")))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # One round loop for both engines: the same records, field by field, but for timings.
    records = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert_same_records(records, [json.loads(line) for line in (want / "metrics.jsonl").read_text().splitlines()])
