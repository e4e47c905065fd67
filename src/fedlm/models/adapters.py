"""LoRA wrapping (HF PEFT) and trainable state as named tensors.

``AdaptedModel`` is the one base model a process keeps in memory. Clients differ
only in the trainable tensors, which are swapped in and out by name: memory per
extra client is its adapter, never a second model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from fedlm.config.schema import LoraConfig
from fedlm.errors import ModelError
from fedlm.models import provenance
from fedlm.models.card import base_card
from fedlm.models.device import resolve_device
from fedlm.stages import TensorDict

ADAPTER_NAME = "default"

# Query/value projections are the LoRA paper's choice (Hu et al. 2021, Sec. 7.1);
# names per architecture family.
_ATTENTION_QV = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("query_key_value",), ("Wqkv",))


def detect_target_modules(model: nn.Module) -> list[str]:
    """Pick LoRA targets from the architecture.

    Returns the query/value projections when the model has them, otherwise every
    linear layer except the output head.
    """
    leaves = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    for family in _ATTENTION_QV:
        if all(f in leaves for f in family):
            return list(family)
    targets = sorted(leaves - {"lm_head", "embed_out", "output"})
    if not targets:
        raise ModelError("found no linear layers to adapt; set lora.target_modules explicitly")
    return targets


class AdaptedModel:
    """A base model plus its trainable part (LoRA adapter or all weights).

    Args:
        model: the base causal LM.
        tokenizer: its tokenizer.
        lora: the LoRA section; ``lora.enabled=False`` trains every weight.
        seed: seeds the random LoRA A initialisation, so every run starts alike.
        freeze_a: keep LoRA's A matrices at their seeded initialisation (FFA-LoRA). They
            are then not trainable state: updates, noise, masks and codecs only see B,
            and every party rebuilds the same A from ``seed``.
        device: where the model trains and is scored (``model.device``: cpu, cuda, cuda:N,
            auto). The state it hands out is always on the CPU.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, lora: LoraConfig, *, seed: int = 0, freeze_a: bool = False,
                 device: str = "cpu") -> None:
        self.tokenizer = tokenizer
        self.lora = lora
        if lora.enabled:
            targets = detect_target_modules(model) if lora.target_modules == "auto" else list(lora.target_modules)
            missing = [t for t in targets if not any(n.endswith(t) for n, _ in model.named_modules())]
            if missing:
                raise ModelError(f"lora.target_modules {missing} not found in the model; try lora.target_modules=auto")
            peft_cfg = PeftLoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none"
            )
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(seed)
                # transformers 5 deprecates an attribute PEFT still reads; not actionable here.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.model: nn.Module = get_peft_model(model, peft_cfg, adapter_name=ADAPTER_NAME)
            self.target_modules = targets
            if freeze_a:
                for name, param in self.model.named_parameters():
                    if ".lora_A." in name:
                        param.requires_grad_(False)
        else:
            self.model = model
            self.target_modules = []
            for p in model.parameters():
                p.requires_grad_(True)
        self.device = resolve_device(device)
        self.model.to(self.device)  # LoRA A/B are built on the CPU with the seeded init, then moved
        # Map state names (PEFT's saved-adapter naming, without the adapter name) to
        # the live parameters, once; swapping state is then a copy per tensor.
        self._params: dict[str, nn.Parameter] = {}
        self._frozen_lora: dict[str, nn.Parameter] = {}  # FFA-LoRA's fixed A matrices
        for name, param in self.model.named_parameters():
            key = name.replace(f".{ADAPTER_NAME}.", ".")
            if param.requires_grad:
                self._params[key] = param
            elif ".lora_" in name:
                self._frozen_lora[key] = param

    @property
    def base_model(self) -> PreTrainedModel:
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def parameters(self) -> Iterable[nn.Parameter]:
        """The trainable parameters (what the optimiser sees)."""
        return self._params.values()

    def names(self) -> list[str]:
        return list(self._params)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(p.shape) for k, p in self._params.items()}

    def frozen_lora_state(self) -> TensorDict:
        """LoRA tensors held fixed and outside the trainable state (FFA-LoRA's A), by name, on the CPU."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self._frozen_lora.items()}

    def get_state(self) -> TensorDict:
        """A detached CPU copy of the trainable tensors, by name (what updates, payloads and checkpoints use)."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self._params.items()}

    def set_state(self, state: TensorDict) -> None:
        """Copy named tensors (on any device) into the trainable parameters (names and shapes must match)."""
        if state.keys() != self._params.keys():
            extra = sorted(set(state) - set(self._params))[:3]
            missing = sorted(set(self._params) - set(state))[:3]
            raise ModelError(f"state does not match the model: unexpected {extra}, missing {missing}")
        with torch.no_grad():
            for k, p in self._params.items():
                p.copy_(state[k])

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self._params.values())

    def save(self, directory: str | Path) -> None:
        """Save in HF format: a PEFT adapter, or (full training) a standard model directory
        that ``AutoModelForCausalLM.from_pretrained`` loads, tokenizer included.

        An adapter names a base a user can resolve (``adapter_config.json``), records the exact
        base weights (``base_model.json``, see :mod:`fedlm.models.provenance`) and gets a model
        card in place of PEFT's empty template; ``fedlm export`` fills in the run's figures.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = provenance.record_of(self.base_model)
        self.model.save_pretrained(directory)
        if self.lora.enabled:
            provenance.write_adapter_base(directory, record)
        else:
            self.tokenizer.save_pretrained(directory)
        lora = {"r": self.lora.r, "alpha": self.lora.alpha, "target_modules": self.target_modules} if self.lora.enabled else None
        (directory / "README.md").write_text(base_card(record, lora=lora), encoding="utf-8")
