"""A real browser opens report.html of a finished tiny run.

Headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it when missing) loads the
page over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no extra
Python package). The test asserts that the sections render, that every image decoded and
that the console logged no error, and saves a full-page screenshot as a test artifact
(``$FEDLM_TEST_ARTIFACTS`` or ``runs/test-artifacts/``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.commands.explain import explain_tokens
from fedlm.config import load_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("FEDLM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1200,900"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run does it)"
)


class DevTools:
    """Chromium DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-framed)."""

    def __init__(self, user_data_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends on fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            preexec_fn=fds, close_fds=False,  # close_fds would shut the dup'ed fds 3 and 4
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, timeout: float) -> dict:
        import select

        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_chrome], [], [], timeout)
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while time.monotonic() < deadline:
            e = self._read(deadline - time.monotonic())
            self.events.append(e)
            if e.get("method") == method:
                return e
        raise TimeoutError(method)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    data = write_lm_jsonl(tmp / "four.jsonl", clients=4)
    cfg = load_config(None, tiny_overrides(data, **{
        "federation.clients_per_round": 4, "federation.rounds": 2, "explain.contribution": "gtg"}))
    run_dir = run_experiment(cfg, out_dir=tmp / "run").run_dir
    explain_tokens(run_dir, "the quick", steps=8, max_new_tokens=3)  # adds the heat map, rewrites the report
    return run_dir


def test_report_renders_in_chromium(finished_run: Path, tmp_path: Path) -> None:
    page = finished_run / "report.html"
    tools = DevTools(tmp_path / "profile")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": page.as_uri()}, session=session)
        tools.wait_for("Page.loadEventFired")
        probe = ("JSON.stringify({h2: [...document.querySelectorAll('h2')].map(h => h.textContent),"
                 " images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth]),"
                 " tokens: document.querySelectorAll('.tok').length,"
                 " auditRows: document.querySelectorAll('h2 + p + table tr').length})")
        value = tools.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)
        found = json.loads(value["result"]["value"])
        shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
    finally:
        tools.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = base64.b64decode(shot["data"])
    (ARTIFACTS / "report_screenshot.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    for section in ("Overview", "Learning curves", "Clients", "Client contribution", "Round audit", "Answer attribution"):
        assert section in found["h2"], found["h2"]
    assert len(found["images"]) >= 5
    broken = [alt for alt, complete, width in found["images"] if not complete or width == 0]
    assert broken == [], f"images that did not load: {broken}"
    assert found["tokens"] > 0  # the attribution heat map's token spans
    errors = [e for e in tools.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    assert errors == [], errors


def _headings(page: Path, profile: Path) -> list[str]:
    tools = DevTools(profile)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tools.send("Page.enable", session=session)
        tools.send("Page.navigate", {"url": page.as_uri()}, session=session)
        tools.wait_for("Page.loadEventFired")
        probe = "JSON.stringify([...document.querySelectorAll('h2')].map(h => h.textContent))"
        value = tools.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)
        return json.loads(value["result"]["value"])
    finally:
        tools.close()


def test_a_robust_runs_report_shows_its_robustness_section(tmp_path: Path) -> None:
    data = write_lm_jsonl(tmp_path / "five.jsonl", clients=5)
    cfg = load_config(None, tiny_overrides(data, **{
        "federation.clients_per_round": 5, "federation.rounds": 2, "robust.aggregator": "median",
        "robust.num_byzantine": 1, "attack.kind": "sign_flip", "attack.fraction": 0.2}))
    run_dir = run_experiment(cfg, out_dir=tmp_path / "run").run_dir
    assert "Robustness" in _headings(run_dir / "report.html", tmp_path / "profile")
