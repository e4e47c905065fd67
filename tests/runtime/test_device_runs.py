"""Every training path on a CUDA GPU gives the run it gives on the CPU (skipped without a GPU).

The model computes on the GPU while updates, aggregation and checkpoints stay on the CPU
(``fedlm.models.device``), so a path that mixes the two (a proximal term, a control
variate, a rank mask, a mixing gradient, a FedEx residual, Opacus noise) fails loudly or
drifts here. Float kernels differ between the devices, so runs agree to a tolerance, not
bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PATHS = {
    "fedavg-lora": {},
    "fedprox": {"local.algorithm": "fedprox", "local.prox_mu": 0.1},
    "scaffold": {"local.algorithm": "scaffold", "local.optimizer": "sgd", "federation.lr": 0.1},
    "fedex-lora": {"aggregation.lora": "exact"},
    "mixed-ranks": {"lora.r": 8, "aggregation.lora": "exact", "aggregation.exact_method": "svd",
                    "resources.profiles": "[{rank: 2}, {rank: 4}, {rank: 8}]"},
    "ditto": {"personal.method": "ditto", "personal.lam": 0.5},
    "mix": {"personal.method": "mix"},
    "fedrep": {"personal.method": "modules", "personal.local_modules": "[v_proj]", "personal.head_steps": 2},
    "finetune-select": {"personal.method": "finetune", "personal.steps": 2, "personal.val_fraction": 0.25},
    "qffl": {"fairness.qffl_q": 1.0, "fairness.qffl_lipschitz": 0.001},
    "dp-sgd": {"privacy.dp_sgd.enabled": "true", "privacy.dp_sgd.noise_multiplier": 0.5},
    "pretrain-nesterov": {"model.init": "random", "lora.enabled": "false", "federation.keep_optimizer_state": "true",
                          "server_opt.name": "nesterov", "server_opt.lr": 0.7, "server_opt.momentum": 0.9},
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_a_run_on_cuda_matches_the_same_run_on_cpu(name: str, tmp_path: Path) -> None:
    data = write_lm_jsonl(tmp_path / "rows.jsonl", rows=24)

    def losses(device: str) -> list[float]:
        """The global model's held-out loss, then each personal model's (personalised runs)."""
        extra = {**PATHS[name], "model.device": device, "output.report": "false"}
        config = load_config(None, tiny_overrides(data, **extra))
        summary = run_experiment(config, out_dir=tmp_path / device).summary
        personal = (summary.get("personal") or {}).get("clients", {})
        return [summary["final"]["eval_loss"], *(personal[c]["personal"]["eval_loss"] for c in sorted(personal))]

    cpu, gpu = losses("cpu"), losses("cuda")
    assert len(gpu) == len(cpu)
    assert all(math.isfinite(g) for g in gpu)
    assert gpu == pytest.approx(cpu, rel=0.02)
