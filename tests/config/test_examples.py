"""Every ready config in examples/ loads and passes every cross-section check."""

from pathlib import Path

import pytest

from fedlm.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_is_an_example_per_capability():
    names = {p.stem for p in EXAMPLES}
    assert {"default", "dp", "secagg", "robust", "hetero", "pretrain", "explain"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads(path):
    config = load_config(path)
    assert config.name == path.stem
