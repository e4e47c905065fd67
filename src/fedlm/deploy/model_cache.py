"""The base model from a local cache: built once per machine, memory-mapped afterwards.

Flower starts a process per message, so a node would otherwise rebuild (download,
convert or randomly initialise) the base model for every message. The first load saves
it as a Hugging Face directory with safetensors weights under
``$FEDLM_CACHE/deploy-models/<key>``; later loads ``from_pretrained`` that directory,
which memory-maps the weights. The key covers everything that decides the weights
(``model.*``), so a changed config never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from fedlm.config.schema import ExperimentConfig
from fedlm.models.adapters import AdaptedModel
from fedlm.models.loading import cache_dir, load_base_model, load_tokenizer


def model_key(config: ExperimentConfig) -> str:
    weights = config.model.model_dump(mode="json", exclude={"device"})  # the same weights on any device
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]


def cached_base(config: ExperimentConfig, *, root: Path | None = None):
    """``(model, tokenizer)`` of ``config.model``, from the cache when it is there."""
    m = config.model
    folder = (root or cache_dir() / "deploy-models") / model_key(config)
    if (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, m.dtype))
        return model, load_tokenizer(str(folder))
    model, tok = load_base_model(m.name, dtype=m.dtype, seed=m.seed, init=m.init, architecture=m.architecture)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:  # write aside, then rename: concurrent nodes on one machine never read half a cache
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def adapted_model(config: ExperimentConfig) -> AdaptedModel:
    """The trainable model as ``fedlm run`` builds it (same LoRA init for the same seed)."""
    base, tok = cached_base(config)
    return AdaptedModel(base, tok, config.lora, seed=config.model.seed,
                        freeze_a=config.lora.enabled and config.aggregation.lora == "ffa",
                        device=config.model.device)


__all__ = ["adapted_model", "cached_base", "model_key"]
