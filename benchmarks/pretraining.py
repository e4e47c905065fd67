"""Federated pre-training: synchronous data parallelism (H = 1) vs DiLoCo with H local steps.

Every setting trains the same small Llama from the same random init on the same clients for
the same number of inner steps per client, T, so all see the same tokens; only how often
they communicate differs: rounds = T / H.

- H = 1, the synchronous baseline: the server averages the clients' weights after every
  inner step (``server_opt.name=fedavg``, server lr 1).
- H > 1, DiLoCo (Douillard et al., 2023, "DiLoCo: Distributed Low-Communication Training of
  Language Models"): H inner AdamW steps per round, then an outer Nesterov step on the mean
  pseudo-gradient (``server_opt.name=nesterov``, lr 0.7, momentum 0.9 by default).

In every setting each client keeps its AdamW state across rounds (it never leaves the
client). The inner lr follows one schedule over the T inner steps (cosine from --inner-lr
down to a tenth of it by default, ``federation.lr_schedule_unit=step``), so the lr at inner
step t is the same for every H: a schedule by round would hold it for H steps at a time.
Held-out loss is measured once, at the end, on all held-out sequences of every client.
Bytes are the payloads actually sent (fp32 both ways, up + down over all rounds).
Goal: at H = 50, final held-out loss within 3% of H = 1 with >= 50x less communication.

Model (``--size base``): byte-level ``tiny-llama`` re-initialised with hidden 128, 4 layers,
4 heads (2 KV heads), intermediate 384: 0.72M parameters; ``--size small`` halves the width
and the depth, so more tokens per parameter fit in a CPU hour. SmolLM2's tokenizer would put
a 49k-row embedding and head (6.3M parameters) on top of this body, which multiplies the
step time and the bytes while adding nothing to the comparison. Data: tinyshakespeare,
paragraphs split IID over 4 clients, 128-byte sequences, 10% of each client held out. T =
400 inner steps of 8 x 128 tokens per client (1.6M tokens in all) runs in about 2 minutes
per H on 2 CPU cores.

    python -m benchmarks.pretraining [--quick] [--steps 400] [--hs 1,10,50,200]
        [--inner-lr 2e-3] [--schedule cosine] [--min-lr-ratio 0.1] [--outer-lr 0.7]
        [--outer-momentum 0.9] [--size base|small] [--warmup 0] [--jobs 1] [--threads 1]
        [--device cpu] [--text PATH]

``--outer-lr`` and ``--outer-momentum`` take comma-separated lists: every H > 1 runs with
every (lr, momentum) pair, against the one synchronous run. ``--device cuda`` trains on a
GPU (``model.device``); several ``--jobs`` then share it.

``--quick`` trains a smaller model on generated text for a few steps (seconds), a smoke check
only: it prints the JSON line but adds no row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks._record import finish
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

TINYSHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/datasets/shakespeare/tinyshakespeare.txt"
# model.architecture overrides (a YAML mapping) by --size; 4 query heads share 2 key/value heads.
ARCHITECTURES = {
    "base": "{hidden_size: 128, num_hidden_layers: 4, intermediate_size: 384,"
    " num_attention_heads: 4, num_key_value_heads: 2}",
    "small": "{hidden_size: 64, num_hidden_layers: 2, intermediate_size: 192,"
    " num_attention_heads: 4, num_key_value_heads: 2}",
}
QUICK_ARCHITECTURE = (
    "{hidden_size: 64, num_hidden_layers: 2, intermediate_size: 128,"
    " num_attention_heads: 4, num_key_value_heads: 2}"
)
COLUMNS = [
    "model",
    "H",
    "rounds",
    "inner_steps",
    "inner_lr",
    "schedule",
    "outer",
    "heldout_loss",
    "loss_vs_sync",
    "bytes_total",
    "comm_reduction_vs_sync",
    "goal",
]
GOAL_H = 50
Setting = tuple[int, float, float]  # (H, outer lr, outer momentum); the outer step is unused at H = 1


def _floats(csv: str) -> list[float]:
    return [float(x) for x in csv.split(",") if x.strip()]


def quick_text(path: Path) -> None:
    """A small generated text: short paragraphs, a few thousand bytes per client."""
    words = ["to", "be", "or", "not", "the", "question", "whether", "tis", "nobler", "in", "mind"]
    paragraphs = [
        " ".join(words[(p * 3 + i) % len(words)] for i in range(20)).capitalize() + "."
        for p in range(200)
    ]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")


def overrides_for(setting: Setting, *, steps: int, args: argparse.Namespace, text: Path) -> list[str]:
    """The experiment of one setting: everything but the round length and the server step is shared."""
    h, outer_lr, outer_momentum = setting
    ov = [
        "model.name=tiny-llama",
        f"model.device={args.device}",
        "model.init=random",
        f"model.architecture={QUICK_ARCHITECTURE if args.quick else ARCHITECTURES[args.size]}",
        "lora.enabled=false",
        "data.source=text",
        f"data.path={text}",
        "data.partition=iid",
        f"data.num_clients={args.clients}",
        "data.min_client_chars=0",
        "data.max_clients=null",
        f"data.seq_len={32 if args.quick else 128}",
        f"federation.rounds={steps // h}",
        f"federation.clients_per_round={args.clients}",
        f"federation.local_steps={h}",
        f"federation.batch_size={4 if args.quick else 8}",
        f"federation.lr={args.inner_lr}",
        f"federation.lr_schedule={args.schedule}",
        "federation.lr_schedule_unit=step",
        f"federation.min_lr_ratio={args.min_lr_ratio}",
        f"federation.warmup={args.warmup}",
        "federation.weight_decay=0.01",
        "federation.keep_optimizer_state=true",
        "federation.seed=0",
        "eval.every=1000000",
        f"eval.max_clients={args.clients}",
        "eval.max_batches_per_client=null",
        "eval.batch_size=32",
        "output.checkpoint_every=1000000",
        "output.report=false",
    ]
    if h == 1:
        return [*ov, "server_opt.name=fedavg"]
    return [
        *ov,
        "server_opt.name=nesterov",
        f"server_opt.lr={outer_lr}",
        f"server_opt.momentum={outer_momentum}",
    ]


def schedule_label(config: Any) -> str:
    fed = config.federation
    warmup = f"warm-up {fed.warmup}, " if fed.warmup else ""
    if fed.lr_schedule == "constant":
        return f"{warmup}constant"
    return f"{warmup}{fed.lr_schedule} to {fed.lr * fed.min_lr_ratio:g} over T"


def run_setting(
    setting: Setting, *, steps: int, args: argparse.Namespace, text: Path, work: Path
) -> dict[str, Any]:
    """One setting, end to end; returns its loss and bytes."""
    torch.set_num_threads(args.threads)
    config = load_config(None, overrides_for(setting, steps=steps, args=args, text=text))
    h = setting[0]
    out = work / "-".join(map(str, setting))
    t0 = time.perf_counter()
    summary = run_experiment(config, out_dir=out).summary
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    opt = config.server_opt
    comm = summary["communication"]
    result = {
        "H": h,
        "model": f"tiny-llama {summary['trainable_parameters'] / 1e6:.2f}M",
        "rounds": summary["rounds_completed"],
        "clients": args.clients,
        "inner_steps": steps,
        "tokens_per_client": steps * config.federation.batch_size * config.data.seq_len,
        "inner_lr": config.federation.lr,
        "schedule": schedule_label(config),
        "outer": "fedavg (every step)" if h == 1 else f"nesterov lr {opt.lr} m {opt.momentum}",
        "initial_loss": summary["initial"]["eval_loss"],
        "heldout_loss": summary["final"]["eval_loss"],
        "heldout_tokens": summary["final"]["tokens"],
        "bytes_up": comm["bytes_up"],
        "bytes_down": comm["bytes_down"],
        "bytes_total": comm["bytes_up"] + comm["bytes_down"],
        "seconds": seconds,
    }
    # Each setting as it ends (the table needs them all): a long grid shows progress and a cut run leaves its rows.
    print(json.dumps({"setting_done": result}), file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small model on generated text (seconds)")
    ap.add_argument(
        "--steps", type=int, default=None, help="inner steps per client T (default 400; quick 20)"
    )
    ap.add_argument(
        "--hs", default=None, help="comma-separated H values (default 1,10,50,200; quick 1,5,10)"
    )
    ap.add_argument("--clients", type=int, default=4, help="clients, all in every round")
    ap.add_argument(
        "--size", choices=sorted(ARCHITECTURES), default="base",
        help="model: base (0.72M parameters) or small (hidden 64, 2 layers), for longer runs per CPU hour",
    )
    ap.add_argument("--inner-lr", type=float, default=2e-3, help="client AdamW lr at the first inner step")
    ap.add_argument(
        "--schedule", choices=["constant", "cosine", "linear"], default="cosine",
        help="inner lr schedule over the T inner steps (the same at step t for every H)",
    )
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="final inner lr / first (cosine, linear)")
    ap.add_argument("--jobs", type=int, default=1, help="settings trained at once, one process each")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per setting")
    ap.add_argument("--warmup", type=int, default=0, help="inner steps of linear lr warm-up (counted in T)")
    ap.add_argument("--outer-lr", default="0.7", help="outer Nesterov lr (H > 1); a comma list is a grid")
    ap.add_argument(
        "--outer-momentum", default="0.9", help="outer Nesterov momentum (H > 1); a comma list is a grid"
    )
    ap.add_argument("--device", default="cpu", help="model.device: cpu, cuda, cuda:N or auto")
    ap.add_argument("--text", type=Path, default=TINYSHAKESPEARE, help="the corpus the clients split")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the settings run here (--jobs 1) or each sets it in its process
    steps = args.steps or (20 if args.quick else 400)
    hs = sorted(
        {int(x) for x in (args.hs or ("1,5,10" if args.quick else "1,10,50,200")).split(",")} | {1}
    )
    bad = [h for h in hs if h < 1 or steps % h]
    if bad:
        ap.error(f"--hs {bad} must divide --steps {steps} (equal tokens: rounds = steps / H)")
    try:
        outers = [(lr, m) for lr in _floats(args.outer_lr) for m in _floats(args.outer_momentum)]
    except ValueError:
        ap.error(f"--outer-lr {args.outer_lr!r} and --outer-momentum {args.outer_momentum!r} must be numbers, comma-separated")
    # The synchronous baseline once, then every H > 1 with every outer step.
    settings: list[Setting] = [(1, 1.0, 0.0)] + [(h, lr, m) for h in hs if h > 1 for lr, m in outers]

    with tempfile.TemporaryDirectory(prefix="fedlm-pretrain-") as tmp:
        work = Path(tmp)
        text = work / "quick.txt"
        if args.quick:
            quick_text(text)
        else:
            text = args.text
            if not text.is_file():
                ap.error(f"--text {text} is not a file; point it at tinyshakespeare.txt (see shared/datasets)")
        one = partial(run_setting, steps=steps, args=args, text=text, work=work)
        if args.jobs > 1:  # independent settings: each in its own process (spawned: no forked torch state)
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(one, settings))
        else:
            results = [one(s) for s in settings]

    sync = results[0]
    for r in results:
        r["loss_vs_sync"] = r["heldout_loss"] / sync["heldout_loss"] - 1.0
        r["comm_reduction_vs_sync"] = sync["bytes_total"] / r["bytes_total"]
        if r["H"] == GOAL_H:
            r["goal_met"] = r["loss_vs_sync"] <= 0.03 and r["comm_reduction_vs_sync"] >= 50
            r["goal"] = "loss within 3%, >= 50x less: " + ("met" if r["goal_met"] else "missed")
    if not args.quick:  # a smoke check adds no row to BENCHMARKS.md
        for r in results:
            finish("pretraining", r, columns=COLUMNS)
    # The last line is the one JSON object of the whole benchmark.
    sys.stdout.write(
        json.dumps({"benchmark": "pretraining", "quick": args.quick, "settings": results}) + "\n"
    )


if __name__ == "__main__":
    main()
