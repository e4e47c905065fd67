"""Child processes of a benchmark: run one, and watch its whole process tree.

:class:`TreeMonitor` samples, every 0.2 s, the summed resident memory of some processes
and all their descendants (Ray's workers, Flower's SuperLink and SuperNodes) and keeps
each process's last CPU time, so a run's peak memory and CPU seconds count every
process it started. :func:`run_child` runs a command under it and reads its last JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import psutil

from benchmarks._record import ROOT


class TreeMonitor:
    """Peak summed RSS (MiB) and CPU seconds of some processes and all their descendants."""

    def __init__(self, roots) -> None:
        self.roots, self.peak, self._cpu = roots, 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in list(self.roots()):
                try:
                    procs = [psutil.Process(pid)]
                    procs += procs[0].children(recursive=True)
                except psutil.Error:
                    continue
                for q in procs:
                    try:
                        total += q.memory_info().rss
                        t = q.cpu_times()
                        self._cpu[(q.pid, q.create_time())] = t.user + t.system
                    except psutil.Error:
                        continue
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(0.2)


def run_child(argv: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    with TreeMonitor(lambda: [proc.pid]) as mon:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    res = json.loads(lines[-1]) if lines else {}
    return {**res, "wall_s": time.perf_counter() - t0, "peak_mib": mon.peak, "cpu_s": mon.cpu_s}
