"""Helpers shared by tests: tiny data written on the fly, tiny-llama overrides."""

from __future__ import annotations

import json
import random
from pathlib import Path

from fedlm.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

_WORDS = {
    "alpha": ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "birds", "sing"],
    "beta": ["to", "be", "or", "not", "to", "be", "that", "is", "the", "question", "whether", "tis", "nobler"],
    "gamma": ["a", "stitch", "in", "time", "saves", "nine", "and", "many", "hands", "make", "light", "work"],
    "delta": ["all", "that", "glitters", "is", "not", "gold", "nor", "all", "who", "wander", "are", "lost"],
}


def write_lm_jsonl(path: Path, *, clients: int = 4, rows: int = 12, seed: int = 0) -> Path:
    """A JSONL file with a ``client`` and a ``text`` field; each client has its own vocabulary."""
    rng = random.Random(seed)
    names = list(_WORDS)[:clients] if clients <= len(_WORDS) else [f"c{i}" for i in range(clients)]
    with path.open("w") as fh:
        for i, name in enumerate(names):
            words = _WORDS.get(name) or _WORDS[list(_WORDS)[i % len(_WORDS)]]
            for _ in range(rows):
                fh.write(json.dumps({"client": name, "text": " ".join(rng.choice(words) for _ in range(30))}) + "\n")
    return path


def write_instruction_jsonl(path: Path, *, rows: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    cats = ["qa", "summary", "brainstorm", "classify"]
    with path.open("w") as fh:
        for i in range(rows):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            fh.write(json.dumps({"instruction": f"What is {a} plus {b}?", "context": "", "response": str(a + b),
                                 "category": cats[i % len(cats)]}) + "\n")
    return path


def tiny_overrides(data_path: Path, **extra: object) -> list[str]:
    """Overrides that make any experiment a seconds-long tiny-llama run."""
    base = {
        "model.name": "tiny-llama",
        "data.source": "jsonl",
        "data.path": str(data_path),
        "data.client_field": "client",
        "data.min_client_chars": 0,
        "data.max_clients": "null",
        "data.seq_len": 32,
        "federation.rounds": 2,
        "federation.clients_per_round": 3,
        "federation.local_steps": 2,
        "federation.batch_size": 2,
        "federation.lr": 0.01,
        "eval.max_clients": 3,
        "eval.batch_size": 4,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


__all__ = ["SHARED", "load_config", "tiny_overrides", "write_instruction_jsonl", "write_lm_jsonl"]


def run_crashing_in_round(config, out_dir: Path, monkeypatch, *, at_round: int = 3) -> None:
    """Run ``config`` into ``out_dir`` with a crash ("power cut") at the start of ``at_round``.

    The rounds before it are completed and checkpointed; ``Simulation.run_round`` is
    restored afterwards, so the caller can resume.
    """
    import pytest

    from fedlm.commands.experiment import run_experiment
    from fedlm.engine import simulation

    real = simulation.Simulation.run_round
    calls = {"n": 0}

    def crash(self, state, **kw):
        calls["n"] += 1
        if calls["n"] == at_round:
            raise RuntimeError("power cut")
        return real(self, state, **kw)

    monkeypatch.setattr(simulation.Simulation, "run_round", crash)
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            run_experiment(config, out_dir=out_dir)
    finally:
        monkeypatch.setattr(simulation.Simulation, "run_round", real)
