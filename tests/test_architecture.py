"""The shape of the code: layers without cycles, and an engine that names no capability."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedlm"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# Words that name a capability; the engine's modules must not branch on or hold any of them.
CAPABILITY_WORDS = {"dp", "secagg", "secure", "personal", "hetero", "heterogeneity", "explain", "fltrust", "attack",
                    "malicious", "privacy", "robust", "contribution", "adversary", "audit"}


def _words(token: str) -> set[str]:
    """An identifier's or string's words: split at non-letters and camelCase humps, lower-cased."""
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+", token)
    return {p.lower() for p in parts}


def test_import_contracts_hold() -> None:
    """pyproject's import-linter contracts: the layers, and no import cycles anywhere."""
    pytest.importorskip("importlinter")
    # Its own process: lint_imports calls logging.config.dictConfig, which disables every logger
    # that exists by then, so a later test in this worker would see no fedlm log record.
    code = f"from importlinter.cli import lint_imports; raise SystemExit(lint_imports(config_filename={str(PYPROJECT)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"run `lint-imports` to see the broken contract:\n{done.stdout}{done.stderr}"


def _code_tokens(path: Path) -> list[str]:
    """The names and strings of a module, without its comments and docstrings."""
    out, previous = [], tokenize.INDENT
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        is_docstring = tok.type == tokenize.STRING and previous in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT)
        if tok.type in (tokenize.NAME, tokenize.STRING) and not is_docstring:
            out.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.type
    return out


@pytest.mark.parametrize("module", ["engine/simulation.py", "engine/loop.py", "engine/pipelines.py"])
def test_the_engine_names_no_capability(module: str) -> None:
    hits = [t for t in _code_tokens(SRC / module) if _words(t) & CAPABILITY_WORDS]
    assert hits == [], f"{module} names capabilities in code: {hits}"


def test_modules_stay_readable_in_one_sitting() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}, f"split these modules by concept: {long}"
