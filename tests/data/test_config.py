"""The data section's own checks: each names the field, the value and the fix."""

import pytest

from fedlm.config import load_config
from fedlm.errors import ConfigError


def _data(*overrides):
    return load_config(None, list(overrides)).data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.encoding=klingon-8"], "data.encoding='klingon-8' is not an encoding Python knows; use e.g. 'utf-8'"),
        (["data.source=parquet", "data.path=x.parquet"], "data.partition='natural' on a parquet source needs data.client_field"),
        (["data.source=hf_disk", "data.path=saved"], "on a hf_disk source needs data.client_field"),
        (["data.source=arrow"], "data.path is required when data.source is 'arrow'"),
        (["data.partition=shard", "data.num_clients=4"], "data.partition='shard' needs data.label_field"),
        (["data.partition=shard", "data.label_field=k"], "data.partition='shard' needs data.num_clients"),
        (["data.format=chatml"], "format"),
        (["data.min_client_chars=-1"], "min_client_chars"),
        (["data.shards_per_client=0"], "shards_per_client"),
    ],
)
def test_bad_data_settings_are_rejected_with_the_fix(overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message.replace("(", r"\(").replace(".", r"\.")):
        _data(*overrides)


def test_min_client_chars_defaults_per_format_unless_set():
    unset = _data()
    assert unset.min_client_chars is None
    assert unset.min_chars("lm") == 2000  # Shakespeare roles: a few seq_len chunks each
    assert [unset.min_chars(f) for f in ("instruction", "messages", "prompt_completion")] == [0, 0, 0]
    assert _data("data.min_client_chars=50").min_chars("messages") == 50
    assert _data("data.min_client_chars=0").min_chars("lm") == 0


def test_new_sources_and_formats_are_accepted():
    d = _data("data.source=hf_disk", "data.path=saved", "data.client_field=org", "data.split=validation",
              "data.format=messages", "data.messages_field=conversation", "data.encoding=latin-1")
    assert (d.source, d.split, d.format, d.messages_field, d.encoding) == (
        "hf_disk", "validation", "messages", "conversation", "latin-1")
