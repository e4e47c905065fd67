"""Model cards (``README.md`` with Hugging Face front matter) for adapters and models fedlm saves.

PEFT writes a template whose every field says "More Information Needed". A card here says
what is known: the base and its exact weights when the adapter is saved, and the run's data,
clients, rounds, privacy, secure aggregation, defences and metrics once ``summary.json``
exists (:mod:`fedlm.commands.model_card` fills those in).
"""

from __future__ import annotations

from typing import Any

import yaml

from fedlm.models.provenance import base_name


def render_card(*, title: str, record: dict[str, Any], library: str, sections: list[tuple[str, str]],
                merged: bool = False) -> str:
    """A card: YAML front matter (base model, library, tags), a title, then ``(heading, markdown)`` sections."""
    front: dict[str, Any] = {}
    if record.get("hub_id"):
        front["base_model"] = record["hub_id"]
        front["base_model_relation"] = "merge" if merged else ("adapter" if library == "peft" else "finetune")
    front["library_name"] = library
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["fedlm", "federated-learning", *(["lora"] if library == "peft" or merged else [])]
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.strip(), ""]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body)


def base_section(record: dict[str, Any]) -> str:
    """Markdown naming the base model and, where known, how its exact weights were made."""
    lines = [f"- base: `{base_name(record)}`"]
    for key, label in (("source", "weights"), ("quantization", "precision"), ("gguf_sha256", "GGUF sha256"),
                       ("weights_sha256", "float32 weights sha256 (model.safetensors)"), ("note", "note")):
        if record.get(key):
            lines.append(f"- {label}: {record[key]}")
    return "\n".join(lines)


def base_card(record: dict[str, Any], *, lora: dict[str, Any] | None) -> str:
    """The card written when an adapter (or a fully trained model) is saved, before the run's summary exists."""
    if lora is not None:
        how = (f"A LoRA adapter (r={lora['r']}, alpha={lora['alpha']}, on {', '.join(lora['target_modules'])}) "
               "trained by federated learning with fedlm; raw data never left its clients.")
        use = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
               f"base = AutoModelForCausalLM.from_pretrained({base_name(record)!r})\n"
               "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')\n```\n\n"
               "`fedlm export RUN_DIR --merged OUT` writes a standalone model with the adapter merged.")
    else:
        how = "A model whose every weight was trained by federated learning with fedlm."
        use = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
               "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')\n```")
    sections = [("Model", how), ("Base model", base_section(record)), ("Use", use),
                ("Training", "The run's data, clients, rounds, privacy and metrics are in its `summary.json`; "
                             "`fedlm export RUN_DIR` writes them into this card.")]
    return render_card(title="fedlm model", record=record, library="peft" if lora is not None else "transformers",
                       sections=sections)


__all__ = ["base_card", "base_section", "render_card"]
