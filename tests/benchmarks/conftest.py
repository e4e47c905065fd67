"""Make the repository's ``benchmarks`` package importable (pytest runs in importlib mode)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
