"""Base models, tokenizers and LoRA adapters; nothing here knows about federation."""

from fedlm.models.adapters import AdaptedModel, detect_target_modules
from fedlm.models.device import module_device, resolve_device, to_device
from fedlm.models.loading import PRESETS, cache_dir, load_base_model, load_tokenizer, smollm2_dir
from fedlm.models.tokenizers import byte_tokenizer

__all__ = [
    "PRESETS",
    "AdaptedModel",
    "byte_tokenizer",
    "cache_dir",
    "detect_target_modules",
    "load_base_model",
    "load_tokenizer",
    "module_device",
    "resolve_device",
    "smollm2_dir",
    "to_device",
]
