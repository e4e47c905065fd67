"""``python -m benchmarks --quick``: every benchmark module is listed and takes ``--quick``."""

import ast
import json
from pathlib import Path

from benchmarks.__main__ import MODULES, last_json

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _flags(module: str) -> set[str]:
    """The string literals passed to ``add_argument`` in a module's source."""
    tree = ast.parse((BENCHMARKS / f"{module}.py").read_text())
    return {a.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "add_argument"
            for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}


def test_every_benchmark_module_is_run_and_takes_quick():
    public = {p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_")}
    assert set(MODULES) == public
    for module in MODULES:
        assert "--quick" in _flags(module), module


def test_last_json_is_the_modules_result_line():
    out = "\n".join(["progress 1/2", json.dumps({"a": 1}), "a warning", json.dumps({"b": 2}), "[1, 2]", ""])
    assert last_json(out) == {"b": 2}
    assert last_json("no result at all") is None
