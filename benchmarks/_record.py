"""Shared plumbing of the benchmarks: the split rule, timing conditions and the results files.

* :class:`SplitRule`: what a benchmark tunes on and what it reports on. Every module that
  reports a task result declares one (``SPLITS``), names both splits in its table, and
  calls :meth:`SplitRule.check_report` before it reports: asking it to report on the split
  it tuned on raises :class:`TunedSplitError` (a ``SystemExit`` with the reason).
* :func:`load_average`, :func:`wait_for_quiet`, :func:`interleave`: timings are taken in
  one process tree, A, B, A, B, ..., with the 1-minute load average before each run.
* :func:`write_results`: raw rows go to ``benchmarks/results/<name>.jsonl``, one JSON
  object per line, each with its date, machine, load and command. BENCHMARKS.md holds the
  curated tables, not raw rows.
* :func:`finish`, :func:`append_table`: the older BENCHMARKS.md appenders, kept for the
  benchmarks that still use them (``privacy``, ``eval_harness``); they also write the
  rows to ``results/<name>.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# ``python -m benchmarks --quick`` points both at a scratch folder (FEDLM_BENCH_OUT), so that
# the small versions of the tables never overwrite the recorded ones.
_OUT = os.environ.get("FEDLM_BENCH_OUT")


class OutputFolderError(SystemExit):
    """Results could not be written where they are meant to go."""


def writable_folder(folder: Path) -> Path:
    """``folder``, once it is known that it exists or can be made, and can be written.

    Checked when a benchmark starts: a run of an hour writes its rows only at its end, so a
    folder it cannot write must stop it before the hour, not after.
    """
    probe = folder
    while not probe.exists():  # the nearest existing ancestor decides
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"results folder {folder}: {probe} is not a writable folder, so this run's rows could not be "
            "saved when it ends; set FEDLM_BENCH_OUT to a new folder or a writable one")
    return folder


BENCHMARKS_MD = Path(_OUT) / "BENCHMARKS.md" if _OUT else ROOT / "BENCHMARKS.md"
RESULTS = writable_folder(Path(_OUT) / "results" if _OUT else Path(__file__).resolve().parent / "results")
QUIET_LOAD = 2.5  # 1-minute load average below which timings are taken (2 shared cores)


# -- the split rule ---------------------------------------------------------------------------
class TunedSplitError(SystemExit):
    """A benchmark was asked to report on the split its settings were chosen on."""


@dataclass(frozen=True)
class SplitRule:
    """A benchmark's validation/test protocol.

    Attributes:
        validation: the split hyperparameters are chosen on (named in the table).
        test: the separate split results are reported on.
        seeds: the seeds (or repeats) every reported figure runs over.
        tuned: what is chosen on ``validation`` ("" entries: nothing is tuned).
        fixed: settings taken as given (module defaults, never compared on any split).
    """

    validation: str
    test: str
    seeds: tuple[int, ...] = (0, 1, 2)
    tuned: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()

    @classmethod
    def untuned(cls, test: str, *, seeds: tuple[int, ...], fixed: tuple[str, ...] = (),
                timing: bool = False) -> SplitRule:
        """The rule of a benchmark that chooses nothing: no validation split, figures on ``test``."""
        what = "timing; nothing tuned" if timing else "nothing tuned"
        return cls(validation=f"none ({what})", test=test, seeds=seeds, fixed=fixed)

    def __post_init__(self) -> None:
        if self.validation == self.test:
            raise ValueError(f"validation and test must differ, both are {self.test!r}")

    def check_report(self, split: str) -> str:
        """The test split's name if results may be reported on ``split`` ("test" or its name);
        raise :class:`TunedSplitError` for the validation split (or an unknown one)."""
        if split in ("validation", self.validation) and self.tuned:
            raise TunedSplitError(
                f"refusing to report on {split!r}: {', '.join(self.tuned)} were chosen on it. "
                f"Report on the test split {self.test!r}; a figure on the split it was tuned on "
                "overstates what the setting does on new data")
        if split in ("validation", self.validation):
            return self.validation  # nothing was tuned on it
        if split not in ("test", self.test):
            raise TunedSplitError(f"unknown split {split!r}; this benchmark has {self.validation!r} "
                                  f"(validation) and {self.test!r} (test)")
        return self.test

    def describe(self, ran: Sequence[int] | None = None) -> str:
        """One line naming both splits and the seeds; ``ran``: the seeds this run actually
        ran, where a benchmark runs them one at a time (shown beside the rule's own)."""
        tuned = ", ".join(self.tuned) or "nothing"
        seeds = ",".join(map(str, self.seeds))
        if ran is not None and tuple(ran) != self.seeds:
            seeds = f"{','.join(map(str, ran))} of the rule's {seeds}"
        return f"tuned on {self.validation} ({tuned}); reported on {self.test}; seeds {seeds}"

    def as_dict(self) -> dict[str, Any]:
        return {"validation": self.validation, "test": self.test, "seeds": list(self.seeds),
                "tuned": list(self.tuned), "fixed": list(self.fixed)}


def add_report_on(ap: Any, rule: SplitRule) -> None:
    """``--report-on`` on ``ap`` (an ``argparse.ArgumentParser``). Where ``rule`` tunes
    nothing, only "test" parses; else :meth:`SplitRule.check_report` refuses the tuned split."""
    if rule.tuned:
        ap.add_argument("--report-on", default="test", help="the split results are reported on (validation refuses)")
    else:
        ap.add_argument("--report-on", default="test", choices=["test"],
                        help="the split results are reported on (only test: nothing is tuned)")


def add_rule_args(ap: Any, rule: SplitRule, *, seeds_help: str) -> None:
    """``--seeds`` (comma-separated, default "0") and ``--report-on`` (:func:`add_report_on`)."""
    ap.add_argument("--seeds", default="0", help=seeds_help)
    add_report_on(ap, rule)


def read_rule_args(args: Any, rule: SplitRule) -> tuple[str, list[int], SplitRule]:
    """The checked split, the seeds and ``rule`` with the seeds this run runs (from
    :func:`add_rule_args`'s options)."""
    split = rule.check_report(args.report_on)
    seeds = [int(x) for x in args.seeds.split(",")]
    return split, seeds, replace(rule, seeds=tuple(seeds))


# -- the machine and its load -----------------------------------------------------------------
def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    isa = cpu_vector_isa()
    return (f"{platform.machine()}, {os.cpu_count()} cores{f' ({isa})' if isa else ''}{gpu}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def cpu_vector_isa(cpuinfo: str | None = None) -> str:
    """The widest vector units the CPU offers ("AVX-512 + AMX", "AVX-512", "AVX2"; "" unknown).

    Two machines with "2 cores" can differ three-fold in torch's fp32 speed (AVX2 against
    AVX-512), so absolute timings name it; ratios measured side by side in one run do not
    depend on it. ``cpuinfo``: the text of /proc/cpuinfo (read when None; "" off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if "avx512f" in flags:
        return "AVX-512 + AMX" if "amx_tile" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else ""


def kept(path: Path, compute: Callable[[], Any], *, keep: bool = True) -> Any:
    """``compute()``, or what an earlier run saved at ``path`` (tensors, numbers and strings,
    read back with ``weights_only``): long benchmarks keep finished work so a cut run resumes.
    The file is written whole or not at all; ``keep=False`` neither reads nor writes."""
    import torch

    if keep and path.is_file():
        return torch.load(path, weights_only=True)
    out = compute()
    if keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(out, partial)
        partial.replace(path)
    return out


def load_average() -> float:
    """The 1-minute load average (the machine is shared: every timing carries it)."""
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float = QUIET_LOAD, *, poll_s: float = 60.0, timeout_s: float = 0.0,
                   log: Callable[[str], None] | None = None) -> float:
    """Wait until the 1-minute load average is below ``max_load``; return it.

    ``timeout_s`` 0 checks once. Past the timeout it returns the load as it is, and the
    caller records it (a timing at a higher load says so beside it).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        load = load_average()
        if load < max_load or time.monotonic() >= deadline:
            return load
        if log:
            log(f"load average {load} >= {max_load}; waiting {poll_s:.0f} s")
        time.sleep(poll_s)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleave(runs: dict[str, Callable[[], dict[str, Any]]], repeats: int,
               *, log: Callable[[str], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run every entry of ``runs`` ``repeats`` times, A, B, A, B, ...; each result gets
    ``load_before``, ``load_after``, ``repeat`` and ``order`` (its position in the sequence).

    Repeats alternate so that a change in the machine's load falls on every entry alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    order = 0
    for r in range(repeats):
        for name, fn in runs.items():
            before = load_average()
            res = dict(fn())
            res.update(repeat=r, order=order, load_before=before, load_after=load_average())
            out[name].append(res)
            order += 1
            if log:
                log(f"{name} repeat {r}: {json.dumps({k: v for k, v in res.items() if not isinstance(v, (list, dict))})}")
    return out


# -- results files ----------------------------------------------------------------------------
@functools.cache
def git_rev() -> str:
    """The commit the running benchmark's code came from ("+dirty": tracked files changed).

    Read once, when this module is imported (below), so that a row written an hour into a
    run names the code that ran, not a commit made while it ran."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


git_rev()


def command_line(module: str) -> str:
    """How this benchmark was started: its ``OMP_NUM_THREADS`` as set, then its arguments."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{prefix}python -m benchmarks.{module} {' '.join(sys.argv[1:])}".strip()


def stamp(command: str | None = None) -> dict[str, Any]:
    """Where and when a row was measured."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "load_1min": load_average(), "git": git_rev(),
            "command": command or "python -m " + " ".join(sys.argv)}


def write_results(name: str, rows: Sequence[dict[str, Any]], *, command: str | None = None,
                  record: bool = True, folder: Path | None = None) -> Path | None:
    """Append ``rows`` to ``results/<name>.jsonl``, each with :func:`stamp`'s fields.

    ``record=False`` (smoke runs, ``--quick`` into a temporary folder) writes nothing.
    """
    if not record:
        return None
    folder = folder or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    st = stamp(command)
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({**st, **row}, default=_jsonable) + "\n")
    return path


def read_results(name: str, *, folder: Path | None = None) -> list[dict[str, Any]]:
    path = (folder or RESULTS) / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub table of ``rows`` (floats to 4 significant digits)."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


# -- the older BENCHMARKS.md appenders (privacy, eval_harness) --------------------------------
def finish(name: str, result: dict[str, Any], *, columns: list[str]) -> None:
    """Append a row to the benchmark's table in BENCHMARKS.md and print the JSON line."""
    result = {"benchmark": name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
              "load_1min": load_average(), **result}
    write_results(_slug(name), [result])
    header = f"## {name}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# fedlm benchmarks\n"
    cols = ["date", *columns, "machine"]
    head = "| " + " | ".join(cols) + " |"
    row = "| " + " | ".join(_fmt(result.get(c)) for c in cols) + " |"
    if header not in text:
        text = text.rstrip() + f"\n\n{header}\n"
    start = text.index(header)
    end = text.find("\n## ", start + len(header))
    section = text[start:] if end == -1 else text[start:end]
    lines = section.rstrip("\n").split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("| ") and i + 1 < len(lines)
             and lines[i + 1].startswith("|---")]
    if heads and lines[heads[-1]] == head:  # the section's last table has these columns: add the row to it
        last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
        lines.insert(last_row + 1, row)
    else:  # none yet, or the columns changed: a new table, so no row lands under the wrong header
        lines += ["", head, "|" + "---|" * len(cols), row]
    new_section = "\n".join(lines) + "\n"
    text = text[:start] + new_section + ("" if end == -1 else text[end:])
    BENCHMARKS_MD.write_text(text)
    sys.stdout.write(json.dumps(result, default=_jsonable) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def append_table(name: str, rows: list[dict[str, Any]], *, columns: list[str], record: bool = True,
                 note: str | None = None) -> None:
    """Append a dated block of rows (a grid of one run) to the benchmark's section.

    Unlike :func:`finish` it prints nothing: the caller prints its own JSON line last.
    ``record=False`` (smoke runs) leaves BENCHMARKS.md alone.
    """
    if not record:
        return
    write_results(_slug(name), rows, command=note)
    stamp_text = f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine()}, load {load_average()}"
    header = f"## {name}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# fedlm benchmarks\n"
    block = [f"Run of {stamp_text}" + (f": `{note}`" if note else ""), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    block += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    if header not in text:
        text = text.rstrip() + f"\n\n{header}\n"
    start = text.index(header)
    end = text.find("\n## ", start + len(header))
    end = len(text) if end == -1 else end
    text = text[:end].rstrip("\n") + "\n\n" + "\n".join(block) + "\n" + text[end:]
    BENCHMARKS_MD.write_text(text)


__all__ = [
    "BENCHMARKS_MD", "QUIET_LOAD", "RESULTS", "OutputFolderError", "SplitRule", "TunedSplitError",
    "add_report_on", "add_rule_args", "append_table", "cpu_seconds", "finish", "interleave", "kept",
    "load_average", "machine", "markdown_table", "peak_rss_mib", "read_results", "read_rule_args",
    "stamp", "wait_for_quiet", "writable_folder", "write_results",
]
