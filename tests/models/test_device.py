"""model.device: resolving it, refusing what this machine lacks, and keeping state on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.client.trainer import train_local
from fedlm.commands.experiment import config_digest
from fedlm.config import load_config
from fedlm.config.schema import LoraConfig
from fedlm.deploy.model_cache import model_key
from fedlm.errors import ConfigError, ModelError
from fedlm.models import AdaptedModel, load_base_model, module_device, resolve_device, to_device


def test_cpu_and_auto_without_a_gpu_resolve_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_with_a_gpu_picks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cuda_without_a_gpu_names_the_field_and_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match=r"model.device='cuda'.*set model.device=cpu, or auto"):
        resolve_device("cuda")


def test_a_gpu_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelError, match=r"sees 2 CUDA GPU\(s\); use cuda:0 .. cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:x", "mps0", ""])
def test_config_rejects_a_misspelt_device(bad):
    with pytest.raises(ConfigError, match=r"model\.device"):
        load_config(None, [f"model.device={bad!r}" if bad else "model.device=''"])


@pytest.mark.parametrize("good", ["cpu", "cuda", "cuda:1", "auto"])
def test_config_accepts_the_device_spellings(good):
    assert load_config(None, [f"model.device={good}"]).model.device == good


def test_the_device_is_not_part_of_a_runs_identity(tmp_path: Path):
    """A run checkpointed on a GPU resumes on a CPU (and a deployed node shares the model cache)."""
    data = write_lm_jsonl(tmp_path / "d.jsonl")
    cpu = load_config(None, tiny_overrides(data, **{"model.device": "cpu"}))
    gpu = load_config(None, tiny_overrides(data, **{"model.device": "cuda"}))
    assert config_digest(cpu) == config_digest(gpu)
    assert model_key(cpu) == model_key(gpu)
    other = load_config(None, tiny_overrides(data, **{"model.seed": 1}))
    assert config_digest(other) != config_digest(cpu)


def test_model_is_placed_on_the_device_and_hands_out_cpu_copies():
    base, tok = load_base_model("tiny-llama", seed=0)
    model = AdaptedModel(base, tok, LoraConfig(r=4, alpha=8), device="cpu")
    assert model.device == torch.device("cpu") == module_device(model.model)
    state = model.get_state()
    assert all(t.device.type == "cpu" for t in state.values())
    name = next(iter(state))
    state[name].add_(1.0)  # a copy, even on the CPU: the model is untouched
    assert not torch.equal(state[name], model.get_state()[name])


def test_kept_optimizer_state_is_on_the_cpu_and_continues_training():
    base, tok = load_base_model("tiny-llama", seed=0)
    model = AdaptedModel(base, tok, LoraConfig(r=4, alpha=8))
    examples = [{"input_ids": list(range(5, 25)), "labels": list(range(5, 25))}] * 4
    first = train_local(model, examples, steps=2, batch_size=2, lr=1e-2, seed=0, optimizer_state={})
    moments = [t for s in first.optimizer_state["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert moments and all(t.device.type == "cpu" for t in moments)
    second = train_local(model, examples, steps=1, batch_size=2, lr=1e-2, seed=1,
                         optimizer_state=first.optimizer_state)
    steps = [s["step"] for s in second.optimizer_state["state"].values()]
    assert all(float(s) == 3.0 for s in steps)  # AdamW went on counting from the kept state


def test_to_device_moves_every_tensor_and_keeps_names():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3, dtype=torch.long)}
    moved = to_device(batch, torch.device("cpu"))
    assert moved.keys() == batch.keys()
    assert all(torch.equal(moved[k], batch[k]) for k in batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the CPU path is tested above")
def test_training_on_cuda_matches_cpu_closely():
    def run(device: str) -> dict[str, torch.Tensor]:
        base, tok = load_base_model("tiny-llama", seed=0)
        model = AdaptedModel(base, tok, LoraConfig(r=4, alpha=8), seed=0, device=device)
        examples = [{"input_ids": list(range(5, 25)), "labels": list(range(5, 25))}] * 4
        train_local(model, examples, steps=3, batch_size=2, lr=1e-2, seed=0)
        return model.get_state()

    cpu, gpu = run("cpu"), run("cuda")
    assert all(gpu[k].device.type == "cpu" for k in gpu)
    assert all(torch.allclose(cpu[k], gpu[k], atol=1e-4) for k in cpu)


def test_a_misspelt_device_is_a_model_error_not_a_torch_one():
    with pytest.raises(ModelError, match=r"'gpu' is not a device; use cpu, cuda, cuda:N"):
        resolve_device("gpu")
