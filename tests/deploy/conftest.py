"""Puts this folder's helpers (deploy_support.py) on the import path.

The ``deploy`` marker (registered in pyproject.toml) marks the tests that start real
Flower processes; ``pytest -m "not deploy"`` leaves them out.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

