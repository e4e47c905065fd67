"""Processes of a local Flower federation: started in their own groups, always stopped.

:class:`Processes` is the common part of :class:`~.launcher.LocalFederation` (the
Deployment Engine on loopback) and :class:`~.simulation_engine.FlowerSimulation`
(Flower's simulation engine): a work directory with Flower's home and the logs, child
processes that each run in their own process group (so stopping one stops the apps it
started), ``flwr`` CLI calls, and waiting for a run's ``summary.json``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import FedlmError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def flwr_bin(name: str) -> str:
    """A console script of the running environment (flwr's CLIs live beside python)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, hard: bool = False, wait_s: float = 10.0) -> None:
        """Signal the process group (the process and the apps it started)."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL if hard else signal.SIGTERM)
            self.popen.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=wait_s)
        except ProcessLookupError:
            pass



@dataclass
class Processes:
    """A work directory and the processes started for one federation (a context manager)."""

    config: ExperimentConfig
    work: Path
    run_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        raise NotImplementedError


    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLWR_HOME=str(self.work / "flwr-home"), FLWR_DISABLE_UPDATE_CHECK="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        return env


    def spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work,
                                     start_new_session=True)
        self.procs[name] = proc = Proc(name, popen, log)
        return proc


    def close(self) -> None:
        """Stop everything this federation started (SuperNodes first, then the SuperLink)."""
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            self.procs[name].stop()


    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        res = subprocess.run([flwr_bin("flwr"), *args], capture_output=True, text=True, env=self.env(), cwd=self.work,
                             timeout=timeout, check=False)
        if res.returncode != 0:
            raise FedlmError(f"`flwr {' '.join(args)}` failed ({res.returncode}): {res.stdout[-800:]} {res.stderr[-800:]}")
        return res.stdout


    @staticmethod
    def wait_for_port(port: int, *, proc: Proc, wait_s: float = 120.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise FedlmError(f"{proc.name} exited ({proc.popen.returncode}); see {proc.log}")
            with socket.socket() as s:
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.5)
        raise FedlmError(f"{proc.name} did not listen on port {port} within {wait_s:g} s; see {proc.log}")


    def wait(self, run: Proc, *, timeout_s: float | None = None) -> dict:
        """Wait for the run to finish; returns ``summary.json``.

        Raises:
            FedlmError: the run ended without a summary, or the SuperLink died.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        summary = self.run_dir / "summary.json"
        while not summary.is_file():
            if not self.procs["superlink"].alive():
                raise FedlmError(f"the SuperLink exited; see {self.procs['superlink'].log}")
            if not run.alive() and not summary.is_file():
                time.sleep(2.0)  # the summary may land just after the stream closes
                if not summary.is_file():
                    raise FedlmError(f"the run ended without {summary}; see {run.log}:\n{_tail(run.log)}")
            if deadline is not None and time.monotonic() > deadline:
                raise FedlmError(f"the run did not finish within {timeout_s:g} s; see {run.log}")
            time.sleep(1.0)
        try:  # the stream closes when the ServerApp returns (after the report is written)
            run.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            run.stop()
        return json.loads(summary.read_text())



def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


__all__ = ["HOST", "Proc", "Processes", "flwr_bin", "free_port"]
