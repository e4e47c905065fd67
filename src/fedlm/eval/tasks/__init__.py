"""lm-evaluation-harness task templates for fedlm's offline benchmarks (package data).

The YAML files here are templates: :mod:`fedlm.eval.lm_tasks` writes, for a given dataset
folder, one small YAML per task that ``include``s them by absolute path and names the data
files. That written folder is an ordinary lm-eval ``--include_path``, so fedlm and
``lm_eval`` itself score exactly the same task definitions. ``docs.py`` holds the functions
the templates reference with ``!function``; it imports neither torch nor fedlm, because
lm-eval loads it from its file path.
"""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent

__all__ = ["TEMPLATES"]
