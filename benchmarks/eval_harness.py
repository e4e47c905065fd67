"""MMLU-Redux medical through lm-eval: fedlm's scoring beside ``lm_eval`` run directly.

One run, side by side, on the same weights and the same task YAMLs:

- ``fedlm``: the model object fedlm loads (``smollm2-135m``: the GGUF converted and cached
  by ``fedlm.models.loading``), scored in process by ``fedlm.eval.likelihood.score_tasks``
  (lm-eval's ``HFLM`` around it, batched, logits kept only where lm-eval reads them).
- ``lm_eval``: its own CLI on the cached HF directory of the same model, ``--include_path``
  the folder fedlm wrote (``fedlm.eval.lm_tasks.write_tasks``), the same batch size and,
  for a subset, the same ``--samples``.

Reported: wall and CPU seconds of each (the CLI's include its start: import, model load,
task index), the load average around each (the machine is shared), accuracy of each, and
how many items the two predict alike. Goal: every item alike, the accuracy equal, fedlm's
scoring within 3 minutes on 2 cores.

    HF_HUB_OFFLINE=1 python -m benchmarks.eval_harness [--quick] [--max-items N] [--batch-size 8]

``--quick`` scores 24 items with tiny-llama (saved to a temporary HF folder for the CLI):
a smoke check of the whole path; nothing recorded.

**Splits and seeds.** Nothing is tuned (no validation split): both sides score the fixed
item set (``--report-on`` accepts only test). One run of each side (no repeats; the scoring
is deterministic, so the seeds are the one repeat, 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._record import SplitRule, add_report_on, append_table
from fedlm.eval.likelihood import lm_eval_samples, mc_metrics, score_tasks
from fedlm.eval.lm_tasks import write_tasks
from fedlm.models.loading import load_base_model, smollm2_dir

NAME = "Benchmark scoring through lm-eval (MMLU-Redux medical)"
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mmlu-redux-medical"
SPLITS = SplitRule.untuned(
    test="MMLU-Redux medical, the 722 items with error_type ok (24 with --quick, or --max-items)",
    seeds=(0,),  # one run of each side
    fixed=("smollm2-135m (tiny-llama with --quick)", "batch 8", "the same task YAMLs for both sides"),
    timing=True,
)
COLUMNS = ["model", "items", "batch_size", "fedlm_s", "fedlm_cpu_s", "fedlm_load", "cli_s", "cli_load",
           "fedlm_acc", "cli_acc", "items_alike", "max_ll_diff"]


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run_fedlm(model, tok, task_set, *, max_items: int | None, batch_size: int) -> dict[str, Any]:
    load, wall, cpu = _load(), time.perf_counter(), _cpu_s()
    scores = score_tasks(model, tok, task_set, batch_size=batch_size, max_items=max_items)
    out = {"s": time.perf_counter() - wall, "cpu_s": _cpu_s() - cpu, "load": f"{load} -> {_load()}"}
    return {**out, "acc": mc_metrics(scores, task_set)["accuracy"],
            "items": {(s.task, s.index): s for s in scores}}


def run_cli(model_dir: Path, task_set, *, samples: dict | None, batch_size: int, out_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu",
           "--tasks", task_set.name, "--include_path", str(task_set.include_path),
           "--batch_size", str(batch_size), "--output_path", str(out_dir), "--log_samples"]
    if samples is not None:
        cmd += ["--samples", json.dumps(samples)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    load, wall, cpu = _load(), time.perf_counter(), _cpu_s()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lm_eval failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = {"s": time.perf_counter() - wall, "cpu_s": _cpu_s() - cpu, "load": f"{load} -> {_load()}"}
    (results,) = out_dir.rglob("results_*.json")
    acc = json.loads(results.read_text())["results"][task_set.name]["acc,none"]
    items = {}
    for path in out_dir.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            items[(task, sample["doc_id"])] = [float(r[0]) for r in sample["filtered_resps"]]
    return {**out, "acc": acc, "items": items}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama, 24 items, nothing recorded")
    parser.add_argument("--max-items", type=int, default=None, help="evenly spaced subset (default: all 722)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DATA, help="the MMLU-Redux medical folder")
    parser.add_argument("--no-cli", action="store_true", help="score with fedlm only")
    add_report_on(parser, SPLITS)
    args = parser.parse_args(argv)
    split = SPLITS.check_report(args.report_on)
    max_items = 24 if args.quick and args.max_items is None else args.max_items
    with tempfile.TemporaryDirectory(prefix="fedlm-eval-harness-") as tmp:
        tmp = Path(tmp)
        if args.quick:
            model, tok = load_base_model("tiny-llama", seed=0)
            model_dir, label = tmp / "tiny-llama", "tiny-llama"
            model.save_pretrained(model_dir)
            tok.save_pretrained(model_dir)
        else:
            model_dir, label = smollm2_dir(), "smollm2-135m"
            model, tok = load_base_model("smollm2-135m")
        task_set = write_tasks("mmlu-medical", args.data, tmp / "tasks")
        fedlm = run_fedlm(model.eval(), tok, task_set, max_items=max_items, batch_size=args.batch_size)
        cli = None if args.no_cli else run_cli(model_dir, task_set, samples=lm_eval_samples(task_set, max_items),
                                               batch_size=args.batch_size, out_dir=tmp / "cli")
    row: dict[str, Any] = {
        "model": label, "items": len(fedlm["items"]), "batch_size": args.batch_size,
        "fedlm_s": round(fedlm["s"], 1), "fedlm_cpu_s": round(fedlm["cpu_s"], 1), "fedlm_load": fedlm["load"],
        "fedlm_acc": fedlm["acc"],
    }
    if cli is not None:
        alike = sum(key in cli["items"] and max(range(len(lls := cli["items"][key])), key=lls.__getitem__) == s.pred
                    for key, s in fedlm["items"].items())
        diff = max((abs(a - b) for key, s in fedlm["items"].items() if key in cli["items"]
                    for a, b in zip(s.loglikelihoods, cli["items"][key])), default=float("nan"))
        row |= {"cli_s": round(cli["s"], 1), "cli_cpu_s": round(cli["cpu_s"], 1), "cli_load": cli["load"],
                "cli_acc": cli["acc"], "cli_items": len(cli["items"]), "items_alike": alike,
                "max_ll_diff": diff}
    row |= {"splits": SPLITS.as_dict(), "reported_on": split}
    append_table(NAME, [row], columns=COLUMNS, record=not args.quick,
                 note="HF_HUB_OFFLINE=1 python -m benchmarks.eval_harness"
                 + (f" --max-items {max_items}" if max_items else ""))
    print(json.dumps({**row, "splits": SPLITS.describe()}))
    return row


if __name__ == "__main__":
    main()
