"""Config of local objectives, LoRA aggregation and resources: values and combinations."""

from __future__ import annotations

import pytest
from tests_support import load_config

from fedlm.errors import ConfigError


def cfg(**kv):
    base = {"model.name": "tiny-llama"}
    base.update(kv)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_defaults_are_plain_fedavg():
    c = cfg()
    assert (c.local.algorithm, c.local.optimizer, c.aggregation.lora, c.aggregation.normalize) == ("fedavg", "adamw", "naive", "none")
    assert c.resources.profiles == []


@pytest.mark.parametrize(
    ("kv", "match"),
    [
        ({"local.algorithm": "fedprox"}, "prox_mu"),
        ({"local.prox_mu": 0.1}, "only read by"),
        ({"aggregation.lora": "exact", "lora.enabled": False}, "lora.enabled"),
        ({"aggregation.lora": "exact", "server_opt.name": "fedadam"}, "server_opt.name=fedavg"),
        ({"aggregation.lora": "exact", "robust.aggregator": "median", "federation.clients_per_round": 5}, "own aggregate stage"),
        ({"aggregation.normalize": "fednova", "robust.aggregator": "median", "federation.clients_per_round": 5}, "fednova"),
        ({"resources.profiles": '[{"rank": 16}]'}, "exceed lora.r"),
        ({"resources.profiles": '[{"rank": 4}]', "local.algorithm": "scaffold"}, "mixed ranks"),
        ({"resources.assign": "sample"}, "needs resources.profiles"),
        ({"resources.profiles": '[{"rank": 4}]', "resources.weights": "[1.0]"}, "assign='sample'"),
        ({"data.partition": "pathological", "data.num_clients": 4}, "label_field"),
    ],
)
def test_impossible_combinations_are_rejected(kv, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kv)


def test_exact_svd_may_use_any_server_optimizer_and_profiles_parse():
    c = cfg(**{"aggregation.lora": "exact", "aggregation.exact_method": "svd", "server_opt.name": "fedadam",
               "lora.r": 16, "resources.profiles": '[{"rank": 4}, {"rank": 8, "local_steps": 2}, {"rank": 16}]'})
    assert [p.rank for p in c.resources.profiles] == [4, 8, 16]
