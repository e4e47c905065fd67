"""The base model from a local cache: built once per machine, memory-mapped afterwards.

Flower starts a process per message, so a node would otherwise rebuild (download,
convert or randomly initialise) the base model for every message. The first load saves
it as a Hugging Face directory with safetensors weights under
``$FEDLM_CACHE/deploy-models/<key>``; later loads ``from_pretrained`` that directory,
which memory-maps the weights (safetensors only: a pickled checkpoint in the folder is
never loaded). The key covers everything that decides the weights (``model.*``), so a
changed config never reads a stale cache.

A long-lived ClientApp process asks for ``warm=True`` and keeps its model between
messages: every message sets all trainable tensors before using it (the broadcast, or the
global state), as the simulator does with its one model, so a kept model computes what a
fresh one would. The server never shares that model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
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
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, m.dtype), use_safetensors=True)
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


_WARM: OrderedDict[str, AdaptedModel] = OrderedDict()
_WARM_LIMIT = 2  # models a long-lived process keeps (each is a whole base model)


def adapted_model(config: ExperimentConfig, *, warm: bool = False) -> AdaptedModel:
    """The trainable model as ``fedlm run`` builds it (same LoRA init for the same seed).

    ``warm``: reuse this process's model of the same config (a long-lived ClientApp).
    """
    key = json.dumps([model_key(config), config.lora.model_dump(mode="json"), config.aggregation.lora,
                      config.model.device], sort_keys=True)
    if warm and key in _WARM:
        _WARM.move_to_end(key)
        return _WARM[key]
    base, tok = cached_base(config)
    model = AdaptedModel(base, tok, config.lora, seed=config.model.seed,
                         freeze_a=config.lora.enabled and config.aggregation.lora == "ffa",
                         device=config.model.device)
    if warm:
        _WARM[key] = model
        while len(_WARM) > _WARM_LIMIT:
            _WARM.popitem(last=False)
    return model


__all__ = ["adapted_model", "cached_base", "model_key"]
