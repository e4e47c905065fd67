"""Processes of a local Flower federation: started in their own groups, always stopped.

:class:`Processes` is the common part of :class:`~.launcher.LocalFederation` (the
Deployment Engine on loopback) and :class:`~.simulation_engine.FlowerSimulation`
(Flower's simulation engine): a work directory with Flower's home and the logs, child
processes, ``flwr`` CLI calls, and waiting for a run's ``summary.json``.

Nothing it starts outlives it:

* each child runs in its own process group (what it starts in turn stays in that group,
  unless it makes its own: Flower's ``flower-superexec`` does), and :meth:`Processes.close`
  stops every process descended from a child, and every process whose environment names
  this federation's ``FLWR_HOME`` (Flower's processes re-parented after their parent died),
  group by group, SIGTERM then SIGKILL;
* on Linux each child gets a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): when the
  process that started it dies, even by SIGKILL, the kernel sends it SIGKILL, and Flower's
  own processes below it exit when their parent is gone;
* while a federation is open, SIGTERM and SIGHUP stop every open federation's processes
  and raise :class:`Terminated` (a ``KeyboardInterrupt``, so the caller unwinds as after
  Ctrl-C, which already stops them through the ``with`` block), and an ``atexit`` hook
  stops whatever is left when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import FedlmError

HOST = "127.0.0.1"
STOP_WAIT_S = 10.0  # between SIGTERM and SIGKILL
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP while a federation was open (its processes are stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def flwr_bin(name: str) -> str:
    """A console script of the running environment (flwr's CLIs live beside python)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


# -- the process tree (Linux /proc; elsewhere only the direct children are known) ------------
def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process we can see."""
    out = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            out[int(entry.name)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return out


def descendants(roots: list[int]) -> set[int]:
    """``roots`` and every process below them."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def _signal_tree(pids: set[int], sig: int) -> None:
    me = os.getpgrp()
    groups = {pgid for pid, (_, pgid) in _table().items() if pid in pids} - {me, 0}
    for pgid in groups:
        if pgid in pids:  # only groups a process of the tree leads
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def marked(var: str, value: str) -> set[int]:
    """Processes whose environment holds ``var=value`` (inherited by everything a child starts)."""
    needle = f"{var}={value}".encode()
    out = set()
    for pid in _table():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    out.add(pid)
        except OSError:
            continue
    return out


def stop_tree(roots: list[int], *, wait_s: float = STOP_WAIT_S, popens: list[subprocess.Popen] = (),
              also: set[int] = frozenset()) -> None:
    """SIGTERM every process from ``roots`` down (and ``also``), SIGKILL what is left after ``wait_s``."""
    tree = (descendants(roots) | descendants(list(also))) - {os.getpid()}
    if not tree:
        return
    _signal_tree(tree, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        # A child counts as gone only once reaped: a multi-threaded process whose main
        # thread has exited shows "Z" in /proc while its other threads still run, and
        # waitpid cannot reap it yet.
        running = [p for p in popens if p.poll() is None]
        if not running and not (tree & _live()):
            return
        time.sleep(0.1)
    _signal_tree(tree & (_live() | {p.pid for p in popens if p.poll() is None}), signal.SIGKILL)
    for p in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=wait_s)


def _live() -> set[int]:
    """Processes that exist and are not zombies."""
    out = set()
    for pid in _table():
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    out.add(pid)
        except (OSError, IndexError):
            continue
    return out


def _death_signal_setter():
    """A preexec function that sets SIGKILL as the child's parent-death signal (Linux; else None)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    parent = os.getpid()

    def setter() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nothing would signal us
            os._exit(1)

    return setter


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, hard: bool = False, wait_s: float = STOP_WAIT_S) -> None:
        """Stop the process and everything below it (``hard``: SIGKILL at once)."""
        if self.popen.poll() is not None and not descendants([self.popen.pid]) - {self.popen.pid}:
            return
        if hard:
            tree = descendants([self.popen.pid])
            _signal_tree(tree, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=wait_s)
            return
        stop_tree([self.popen.pid], wait_s=wait_s, popens=[self.popen])


# -- open federations and the signals that must stop them -------------------------------------
_OPEN: list[Processes] = []
_PREVIOUS: dict[int, object] = {}
_TRAPPED = (signal.SIGTERM, signal.SIGHUP)


def stop_all() -> None:
    """Stop the processes of every open federation (signal handlers and ``atexit`` call it)."""
    for fed in list(_OPEN):
        fed.close()


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    raise Terminated(signum)


def _trap() -> None:
    if _PREVIOUS or threading.current_thread() is not threading.main_thread():
        return  # already trapped, or signals cannot be handled from here (close() still runs)
    for sig in _TRAPPED:
        _PREVIOUS[sig] = signal.signal(sig, _on_signal)


def _untrap() -> None:
    if _OPEN or not _PREVIOUS or threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in _PREVIOUS.items():
        signal.signal(sig, handler)
    _PREVIOUS.clear()


atexit.register(stop_all)


@dataclass(eq=False)
class Processes:
    """A work directory and the processes started for one federation (a context manager)."""

    config: ExperimentConfig
    work: Path
    run_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def __enter__(self):
        _OPEN.append(self)
        _trap()
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
        """Start ``argv`` in a new process group, logging to ``logs/NAME.log``."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        death = _death_signal_setter()

        def preexec() -> None:  # a group of its own: stopping it stops what it starts
            os.setpgid(0, 0)
            if death is not None:
                death()

        with log.open("ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work,
                                     preexec_fn=preexec)
        self.procs[name] = proc = Proc(name, popen, log)
        return proc

    def close(self) -> None:
        """Stop everything this federation started, and what those processes started."""
        try:
            procs = list(self.procs.values())
            stop_tree([p.popen.pid for p in procs], popens=[p.popen for p in procs],
                      also=marked("FLWR_HOME", str(self.work / "flwr-home")))
        finally:
            if self in _OPEN:
                _OPEN.remove(self)
            _untrap()

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        res = subprocess.run([flwr_bin("flwr"), *args], capture_output=True, text=True, env=self.env(), cwd=self.work,
                             timeout=timeout, check=False, preexec_fn=_death_signal_setter())
        if res.returncode != 0:
            raise FedlmError(f"`flwr {' '.join(args)}` failed ({res.returncode}): {res.stdout[-800:]} {res.stderr[-800:]}")
        return res.stdout

    def flwr_here(self, *args: str) -> str:
        """``flwr ARGS`` run in this process, with this federation's ``FLWR_HOME``; its output.

        The ``flwr`` CLI's imports then cost once per process, not once per call (seconds
        each on a busy machine).

        Raises:
            FedlmError: the command failed.
        """
        import io
        import tempfile
        import warnings

        with warnings.catch_warnings():  # typer's deprecation notices about flwr's own options
            warnings.simplefilter("ignore", DeprecationWarning)
            from flwr.cli.app import app

        out, err = io.StringIO(), io.StringIO()
        saved = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(self.work / "flwr-home")
        with tempfile.TemporaryFile() as raw:  # flwr writes its JSON to file descriptor 1 itself
            sys.stdout.flush()
            fd = os.dup(1)
            os.dup2(raw.fileno(), 1)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    app(list(args), standalone_mode=False)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise FedlmError(f"`flwr {' '.join(args)}` failed ({exc.code}): {out.getvalue()[-800:]} "
                                     f"{err.getvalue()[-800:]}") from None
            except Exception as exc:  # click's and flwr's own errors
                raise FedlmError(f"`flwr {' '.join(args)}` failed: {exc}; {out.getvalue()[-800:]}") from None
            finally:
                sys.stdout.flush()
                os.dup2(fd, 1)
                os.close(fd)
                if saved is None:
                    os.environ.pop("FLWR_HOME", None)
                else:
                    os.environ["FLWR_HOME"] = saved
            raw.seek(0)
            return out.getvalue() + raw.read().decode(errors="replace")

    @staticmethod
    def wait_for_port(port: int, *, proc: Proc, wait_s: float = 120.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise FedlmError(f"{proc.name} exited ({proc.popen.returncode}); see {proc.log}")
            with socket.socket() as s:
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.2)
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
            time.sleep(0.2)
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


__all__ = ["HOST", "Proc", "Processes", "Terminated", "descendants", "flwr_bin", "free_port", "marked", "stop_all",
           "stop_tree"]
