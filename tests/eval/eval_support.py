"""Helpers of the lm-eval tests (tests/eval/conftest.py puts this folder on sys.path):
benchmark files in the shipped formats and a hand-checkable Llama."""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedlm.models.tokenizers import byte_tokenizer

MMLU_HEADER = "question,choices,answer,error_type,source,correct_answer,potential_reason"


def mmlu_csv(rows: list[tuple[str, list[str], str, str]], *, sep: str = ",") -> str:
    """An MMLU-Redux CSV: (question, choices, answer, error_type) per row, quoted as the
    shipped files are (the choices cell is a Python list literal)."""

    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    lines = [MMLU_HEADER.replace(",", sep)]
    for question, choices, answer, error_type in rows:
        lines.append(sep.join([cell(question), cell(repr(choices)), answer, error_type, "src", "", ""]))
    return "\n".join(lines) + "\n"


def pubmed_record(pid: str, label: str) -> dict:
    return {"QUESTION": f"Does {pid} work?", "CONTEXTS": ["First part.", "Second part."],
            "final_decision": label, "LONG_ANSWER": "..."}



def bigram_llama(boosts: dict[tuple[str, str], float]) -> tuple[LlamaForCausalLM, object]:
    """A real transformers Llama (zero layers) whose logits at t are ``table[ids[t]]``.

    The byte tokenizer gives one id per character; ``boosts[(prev, next)]`` sets the logit
    of ``next`` after ``prev``, all others are 0. With a one-hot embedding and no layer,
    the final RMSNorm scales the one-hot by ``s = 1/sqrt(1/V + eps)`` and the head
    ``table.T / s`` gives back the table row, so every log-likelihood is a sum of
    log-softmax entries one can write out by hand.
    """
    tok = byte_tokenizer()
    V = len(tok)

    def tid(ch: str) -> int:
        (i,) = tok(ch, add_special_tokens=False)["input_ids"]
        return i

    table = torch.zeros(V, V)
    for (prev, nxt), logit in boosts.items():
        table[tid(prev), tid(nxt)] = logit
    config = LlamaConfig(
        vocab_size=V, hidden_size=V, intermediate_size=4, num_hidden_layers=0,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    scale = 1 / math.sqrt(1 / V + config.rms_norm_eps)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(table.T / scale)
    return model.eval(), tok
