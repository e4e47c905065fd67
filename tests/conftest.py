"""Fixtures shared by every test; the helpers themselves live in tests_support.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # make tests_support importable in importlib mode

from tests_support import load_config, tiny_overrides, write_lm_jsonl


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep test runs away from the user's cache (one cache per test session).

    The session's xdist workers share it, so SmolLM2's GGUF is converted once, not once each.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp is <session>/popen-gwN
        root = root.parent
    monkeypatch.setenv("FEDLM_CACHE", str(root / "fedlm-cache"))


@pytest.fixture
def lm_data(tmp_path: Path) -> Path:
    return write_lm_jsonl(tmp_path / "clients.jsonl")


@pytest.fixture
def tiny_config(lm_data: Path):
    return load_config(None, tiny_overrides(lm_data))

