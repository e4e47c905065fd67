"""Nothing a federation starts outlives it: SIGTERM, SIGINT, its parent's death, a grandchild
that made its own session.

The first tests use ``sleep`` processes (milliseconds); the ``deploy`` ones start real
Flower processes: ``fedlm deploy local`` stopped by SIGTERM mid-run, and a launcher killed
by SIGKILL (only the kernel's parent-death signal can act then).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedlm.deploy.processes import marked, stop_tree

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]

# A federation whose "processes" are sleeps: a child, and a grandchild in its own session
# (as Flower's flower-superexec makes), all with this federation's FLWR_HOME.
SLEEPERS = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path
    from fedlm.deploy.processes import Processes, marked

    class Sleepers(Processes):
        def start(self):
            self.spawn("child", [sys.executable, "-c",
                "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
                " start_new_session=True); time.sleep(600)"])

    work = Path(sys.argv[1])
    with Sleepers(None, work, work / "run") as fed:
        while len(marked("FLWR_HOME", str(work / "flwr-home"))) < 2:  # the grandchild is up
            time.sleep(0.05)
        print("ready", flush=True)
        if sys.argv[2] == "self-term":
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(600)
''')


def _marked_by(work: Path) -> set[int]:
    return marked("FLWR_HOME", str(work / "flwr-home"))


def _gone(work: Path, wait_s: float = 20.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not _marked_by(work):
            return True
        time.sleep(0.2)
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _default_sigint() -> None:
    # A shell without job control starts background jobs (and so pytest and its workers)
    # with SIGINT ignored, and children inherit that; the process under test must start
    # as one launched from a terminal would, or the SIGINT case tests nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(script: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO, preexec_fn=_default_sigint)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    return p


def _wait_for(work: Path, n: int, wait_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + wait_s
    while len(found := _marked_by(work)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "self-term"])
def test_a_signal_stops_every_process_and_the_grandchild_in_its_own_session(tmp_path, how):
    p = _start(SLEEPERS, str(tmp_path), how)  # "ready": the child and its own-session grandchild run
    if how != "self-term":  # (a self-term stops them right after "ready": nothing left to look at)
        assert len(_wait_for(tmp_path, 2)) >= 2
        p.send_signal(getattr(signal, how))
    rc = p.wait(timeout=60)
    assert rc != 0 and _gone(tmp_path)
    if how != "SIGINT":
        assert "Terminated" in p.stderr.read()  # raised after the processes were stopped


def test_the_kernel_stops_the_children_when_the_launcher_is_killed(tmp_path):
    p = _start(SLEEPERS, str(tmp_path), "wait")
    found = _wait_for(tmp_path, 2)
    assert len(found) >= 2
    p.kill()  # SIGKILL: no handler, no atexit; only PR_SET_PDEATHSIG acts
    p.wait(timeout=30)
    deadline = time.monotonic() + 20
    child = min(found)  # the direct child got the parent-death signal
    while time.monotonic() < deadline and child in _marked_by(tmp_path):
        time.sleep(0.2)
    assert child not in _marked_by(tmp_path)
    for pid in _marked_by(tmp_path):  # an own-session grandchild is Flower's to stop (its parent monitor)
        os.kill(pid, signal.SIGKILL)


# On SIGTERM the main thread leaves at once (the process shows "Z" in /proc) while another
# thread runs on for a second: waitpid cannot reap the process until that thread ends.
LINGERING = textwrap.dedent('''
    import ctypes, signal, threading, time
    def on_term(*_):
        threading.Thread(target=time.sleep, args=(1.0,)).start()
        ctypes.CDLL(None).pthread_exit(None)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(600)
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pthread_exit of the main thread, as on Linux")
def test_a_child_whose_main_thread_left_first_is_stopped_only_once_reaped():
    p = subprocess.Popen([PY, "-c", LINGERING], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    stop_tree([p.pid], popens=[p], wait_s=20)
    assert p.poll() is not None  # reaped: not only a zombie leader with a thread still running


@pytest.mark.slow
@pytest.mark.deploy
def test_fedlm_deploy_local_stops_everything_it_started_on_sigterm(tmp_path):
    from tests_support import tiny_overrides, write_lm_jsonl

    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    out = tmp_path / "run"
    work = tmp_path / ".run-deploy"
    sets = [x for o in tiny_overrides(data, **{"federation.rounds": 50, "deploy.floor_s": 120})
            for x in ("--set", o)]
    p = subprocess.Popen([PY, "-m", "fedlm.cli.main", "deploy", "local", "--nodes", "3", "--out", str(out), *sets],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    kinds = ("flower-superlink", "flwr-serverapp", "flower-supernode", "fedlm.deploy.worker", "flwr run")
    deadline = time.monotonic() + 240
    while True:  # until every kind of process it starts is up (the ServerApp last)
        started = _marked_by(work)
        commands = " ".join(_cmdline(pid) for pid in started)
        if all(k in commands for k in kinds):
            break
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()[-3000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    output = p.stdout.read()
    assert rc == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped every process it started" in output
    assert _gone(work, wait_s=30), f"still running: {sorted(_marked_by(work))}"
