"""The engines benchmark's workload in plain Hugging Face code (transformers + PEFT + torch).

Nothing here imports fedlm or Flower: the Flower-native app (:mod:`benchmarks._flower_llm_app`)
and the floor (a sequential loop with one model, :func:`floor_main`) are both built on it,
so they run the very same training step.

* :func:`load_lora_model`: an HF causal LM from a directory, wrapped with a PEFT LoRA
  adapter on ``q_proj``/``v_proj`` (r and alpha from the workload).
* :func:`client_blocks`: a client's JSONL texts, tokenised, concatenated and cut into
  ``seq_len``-token blocks (what fedlm's ``lm`` format does).
* :func:`train_steps`: ``steps`` AdamW steps on seeded batches of blocks; returns the
  number of examples seen.

``python -m benchmarks._hf_workload --model DIR --data DIR --clients N --rounds R``
runs the floor and prints one JSON line: each round's seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

WORKLOAD = {"r": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"], "lr": 0.01, "batch_size": 2, "seq_len": 64,
            "steps": 1, "max_grad_norm": 1.0}


def load_lora_model(model_dir: str | Path, *, seed: int = 0):
    """``(peft_model, tokenizer)``: the base model from ``model_dir`` with a fresh LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = LoraConfig(r=WORKLOAD["r"], lora_alpha=WORKLOAD["alpha"], lora_dropout=0.0,
                     target_modules=WORKLOAD["targets"], bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, cfg), tok


def client_blocks(path: str | Path, tokenizer, *, seq_len: int = WORKLOAD["seq_len"]) -> list[list[int]]:
    """The client's texts as ``seq_len``-token blocks (texts joined by EOS, the tail dropped)."""
    ids: list[int] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
    return [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def train_steps(model, blocks: list[list[int]], *, seed: int, steps: int = WORKLOAD["steps"],
                batch_size: int = WORKLOAD["batch_size"], lr: float = WORKLOAD["lr"]) -> int:
    """``steps`` AdamW steps on seeded batches of ``blocks``; the examples seen."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    seen = 0
    for _ in range(steps):
        batch = torch.tensor(rng.sample(blocks, min(batch_size, len(blocks))))  # (B, seq_len)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, WORKLOAD["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += batch.shape[0]
    return seen


def floor_main(argv: list[str] | None = None) -> None:
    """The floor: one model, clients trained one after another, states averaged by examples."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder of client_<i>.jsonl")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model, tok = load_lora_model(args.model)
    blocks = [client_blocks(Path(args.data) / f"client_{i}.jsonl", tok) for i in range(args.clients)]
    glob = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        total, acc = 0, {k: torch.zeros_like(v) for k, v in glob.items()}
        for i in range(args.clients):
            set_peft_model_state_dict(model, glob)
            n = train_steps(model, blocks[i], seed=r * 100_003 + i)
            for k, v in get_peft_model_state_dict(model).items():
                acc[k] += n * v.detach()
            total += n
        glob = {k: v / total for k, v in acc.items()}
        rounds.append(time.perf_counter() - t0)
    sys.stdout.write(json.dumps({"round_seconds": rounds, "total_s": time.perf_counter() - t_start}) + "\n")


if __name__ == "__main__":
    floor_main()
